"""The one-layer (or n-layer) transformer of Nanda et al. 2023, with TransformerLens names.

    resid_0  = W_E[tokens] + W_pos                                   [batch, pos, d_model]
    per block l:
      attn   = softmax(causal(q k^T / sqrt(d_head))) v W_O             (no LayerNorm anywhere)
      resid_mid = resid_pre + attn
      post   = ReLU(resid_mid W_in + b_in)                             [batch, pos, d_mlp]
      resid_post = resid_mid + post W_out + b_out
    logits   = resid_post[:, -1] W_U + b_U                             [batch, d_vocab_out]

Parameter names and shapes are TransformerLens's (`embed.W_E`, `blocks.0.attn.W_Q`
[n_heads, d_model, d_head], ..., `unembed.W_U`), so `model.state_dict()` loads into a
TransformerLens 3 `HookedTransformer` with the config from
`ModelConfig.to_hooked_transformer_config()` as it is, and into a TransformerLens 4
`TransformerBridge` after `convert_tl_checkpoint` (husai.model.interop does either).
Biases exist (TransformerLens has them) but are buffers fixed at zero during training, as in
Nanda's grokking setup (no attention biases); a checkpoint with non-zero biases still loads.

Only the `=` position feeds the loss, so `forward(last_only=True)` computes the last block's
queries, MLP and unembedding at that position only (BENCHMARKS.md, "Model training step").
Every intermediate is exposed under TransformerLens hook names via `run_with_cache` and can be
replaced via `run_with_hooks`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelConfig:
    """Architecture of the modular-arithmetic transformer (TransformerLens field names)."""

    p: int = 113
    """The modulus; vocabulary is 0..p-1 plus `=` (token p), outputs are 0..p-1."""
    n_layers: int = 1
    """Number of attention+MLP blocks (Nanda et al.: 1)."""
    d_model: int = 128
    """Residual stream width."""
    n_heads: int = 4
    """Attention heads per block."""
    d_head: int = 32
    """Width of each head."""
    d_mlp: int = 512
    """MLP hidden width (ReLU)."""

    @property
    def d_vocab(self) -> int:
        return self.p + 1

    @property
    def d_vocab_out(self) -> int:
        return self.p

    n_ctx = 3  # [a, b, =]

    def to_hooked_transformer_config(self) -> dict:
        """The config fields that reproduce this model in TransformerLens: HookedTransformerConfig's
        (3.x) and TransformerBridgeConfig's (4.x) take the same names."""
        return dict(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_head,
            d_mlp=self.d_mlp,
            d_vocab=self.d_vocab,
            d_vocab_out=self.d_vocab_out,
            n_ctx=self.n_ctx,
            act_fn="relu",
            normalization_type=None,
            attn_only=False,
            positional_embedding_type="standard",
            original_architecture="husai-modular",
        )

    def to_dict(self) -> dict:
        return asdict(self)


HookFn = Callable[[torch.Tensor], torch.Tensor]


class _Ctx:
    """Per-call hook state: functions that replace activations, and a cache that records them."""

    def __init__(self, hooks: dict[str, HookFn] | None, cache: dict | None, names: set[str] | None):
        self.hooks = hooks or {}
        self.cache = cache
        self.names = names

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        fn = self.hooks.get(name)
        if fn is not None:
            x = fn(x)
        if self.cache is not None and (self.names is None or name in self.names):
            self.cache[name] = x
        return x


def _noop(name: str, x: torch.Tensor) -> torch.Tensor:
    return x


class _Named(nn.Module):
    """A bare container so parameters get TransformerLens names (`embed.W_E`, `mlp.W_in`, ...)."""


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, d, e, m = cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp
        self.attn = _Named()
        for n in ("W_Q", "W_K", "W_V"):
            self.attn.register_parameter(n, nn.Parameter(torch.empty(H, d, e)))
            self.attn.register_buffer("b_" + n[-1], torch.zeros(H, e))
        self.attn.W_O = nn.Parameter(torch.empty(H, e, d))
        self.attn.register_buffer("b_O", torch.zeros(d))
        self.mlp = _Named()
        self.mlp.W_in = nn.Parameter(torch.empty(d, m))
        self.mlp.register_buffer("b_in", torch.zeros(m))
        self.mlp.W_out = nn.Parameter(torch.empty(m, d))
        self.mlp.register_buffer("b_out", torch.zeros(d))

    def forward_fast(self, tokens: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """Fast path for a 1-layer model in training: resid_post at `=` only, no hooks.

        tokens: [B, P] int64; table: [P, d_vocab, d_model] with table[j, t] = W_E[t] + W_pos[j].
        Returns [B, d_model]. Block 0's input takes only P * d_vocab distinct values, so q, k, v
        are projected once per (position, token) and gathered, and the attention scores
        q_= . k_j are a [P * d_vocab * d_vocab, H] table indexed by (j, token at `=`, token at j):
        no per-example q/k tensors at all. Autograd turns each gather into an index_add. Equal to
        `forward(..., last_only=True)` up to float rounding (tests/model/test_transformer.py).
        """
        a, mlp = self.attn, self.mlp
        P, V, d = table.shape
        H, _, e = a.W_Q.shape
        B = tokens.shape[0]
        W = torch.cat([a.W_Q, a.W_K, a.W_V], dim=2).permute(1, 0, 2).reshape(d, H * 3 * e)
        qkv = (table.reshape(P * V, d) @ W).view(P, V, H, 3, e)
        qt = qkv[P - 1, :, :, 0] + a.b_Q  # [V, H, e]: queries at the last position
        kt = qkv[:, :, :, 1] + a.b_K  # [P, V, H, e]
        vt = qkv[:, :, :, 2] + a.b_V
        # All gathers go through F.embedding: its backward is a dense index_add that stays fast
        # with 2 threads, where advanced-indexing's index_put(accumulate) was ~10x slower.
        S = torch.einsum("uhe,pvhe->puvh", qt, kt).reshape(P * V * V, H) / math.sqrt(
            e
        )  # [(P, q tok, k tok), H]
        pos = torch.arange(P, device=tokens.device)
        scores = F.embedding(pos * V * V + tokens[:, -1:] * V + tokens, S)  # [B, P, H]
        pattern = scores.softmax(dim=1)  # [B, P, H]
        v = F.embedding(pos * V + tokens, vt.reshape(P * V, H * e)).view(B, P, H, e)
        z = (pattern.unsqueeze(-1) * v).sum(1)  # [B, H, e]
        resid_mid = torch.addmm(a.b_O, z.reshape(B, H * e), a.W_O.reshape(H * e, d)) + F.embedding(
            tokens[:, -1], table[-1]
        )
        post = F.relu(torch.addmm(mlp.b_in, resid_mid, mlp.W_in), inplace=True)
        return torch.addmm(mlp.b_out, post, mlp.W_out).add_(resid_mid)

    def forward(self, x: torch.Tensor, hook, prefix: str, last_only: bool) -> torch.Tensor:
        """x: [B, P, d_model] -> [B, Q, d_model], Q = 1 if last_only else P. The plain path."""
        a = self.attn
        B, P, d = x.shape
        H, _, e = a.W_Q.shape
        x = hook(prefix + "hook_resid_pre", x)
        xq = x[:, -1:] if last_only else x
        Q = xq.shape[1]
        # [H, d, e] -> [d, H*e]: one matmul for all heads instead of an einsum per head.
        q = (xq @ a.W_Q.permute(1, 0, 2).reshape(d, H * e)).view(B, Q, H, e) + a.b_Q
        k = (x @ a.W_K.permute(1, 0, 2).reshape(d, H * e)).view(B, P, H, e) + a.b_K
        v = (x @ a.W_V.permute(1, 0, 2).reshape(d, H * e)).view(B, P, H, e) + a.b_V
        q, k, v = (
            hook(prefix + "attn.hook_q", q),
            hook(prefix + "attn.hook_k", k),
            hook(prefix + "attn.hook_v", v),
        )
        if Q == 1:
            # One query (at `=`) sees every position, so no mask. With 3 keys, batched 1x32 @ 32x3
            # matmuls cost more in dispatch than the arithmetic; a broadcast multiply-sum is ~10x
            # faster.
            scores = ((q * k).sum(-1) / math.sqrt(e)).transpose(1, 2).unsqueeze(2)  # [B, H, 1, P]
        else:
            scores = q.transpose(1, 2) @ k.permute(0, 2, 3, 1) / math.sqrt(e)  # [B, H, Q, P]
            mask = torch.ones(Q, k.shape[1], dtype=torch.bool, device=x.device).triu(1)  # causal
            scores = scores.masked_fill(mask, float("-inf"))
        scores = hook(prefix + "attn.hook_attn_scores", scores)
        pattern = hook(prefix + "attn.hook_pattern", scores.softmax(dim=-1))
        if Q == 1:
            z = (pattern[:, :, 0].transpose(1, 2).unsqueeze(-1) * v).sum(
                1, keepdim=True
            )  # [B, 1, H, e]
        else:
            z = (pattern @ v.transpose(1, 2)).transpose(1, 2)  # [B, Q, H, e]
        z = hook(prefix + "attn.hook_z", z)
        attn_out = hook(
            prefix + "hook_attn_out", z.reshape(B, Q, H * e) @ a.W_O.reshape(H * e, d) + a.b_O
        )
        resid_mid = hook(prefix + "hook_resid_mid", xq + attn_out)
        pre = hook(prefix + "mlp.hook_pre", resid_mid @ self.mlp.W_in + self.mlp.b_in)
        post = hook(prefix + "mlp.hook_post", F.relu(pre))
        mlp_out = hook(prefix + "hook_mlp_out", post @ self.mlp.W_out + self.mlp.b_out)
        return hook(prefix + "hook_resid_post", resid_mid + mlp_out)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = _Named()
        self.embed.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.pos_embed = _Named()
        self.pos_embed.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.unembed = _Named()
        self.unembed.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out))
        self.unembed.register_buffer("b_U", torch.zeros(cfg.d_vocab_out))

    def init_weights(self, seed: int) -> "Transformer":
        """Nanda et al.'s initialisation: N(0, 1/d_model) for every matrix, N(0, 1/d_vocab) for W_U.

        Draws from a private generator on the CPU, so the same seed gives the same weights on every
        device and regardless of the global RNG state.
        """
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                std = (
                    1 / math.sqrt(self.cfg.d_vocab)
                    if name == "unembed.W_U"
                    else 1 / math.sqrt(self.cfg.d_model)
                )
                param.copy_(torch.randn(param.shape, generator=gen) * std)
        return self

    def hook_names(self) -> list[str]:
        """Every hook point, in forward order (TransformerLens names)."""
        names = ["hook_embed", "hook_pos_embed"]
        for l in range(self.cfg.n_layers):
            names += [
                f"blocks.{l}.{n}"
                for n in (
                    "hook_resid_pre",
                    "attn.hook_q",
                    "attn.hook_k",
                    "attn.hook_v",
                    "attn.hook_attn_scores",
                    "attn.hook_pattern",
                    "attn.hook_z",
                    "hook_attn_out",
                    "hook_resid_mid",
                    "mlp.hook_pre",
                    "mlp.hook_post",
                    "hook_mlp_out",
                    "hook_resid_post",
                )
            ]
        return names

    def forward(self, tokens: torch.Tensor, last_only: bool = True, hook=_noop) -> torch.Tensor:
        """tokens: [B, 3] int64 -> logits [B, d_vocab_out] (last_only) or [B, 3, d_vocab_out].

        With last_only the final block runs its queries, MLP and unembedding at `=` only.
        """
        W_pos = self.pos_embed.W_pos[: tokens.shape[1]]
        n = len(self.blocks)
        if hook is _noop and last_only and n == 1:
            table = self.embed.W_E[None] + W_pos[:, None]  # [P, d_vocab, d_model]
            return torch.addmm(
                self.unembed.b_U, self.blocks[0].forward_fast(tokens, table), self.unembed.W_U
            )
        embed = hook("hook_embed", self.embed.W_E[tokens])
        pos = hook("hook_pos_embed", W_pos.expand_as(embed))
        x = embed + pos
        for l, block in enumerate(self.blocks):
            x = block(x, hook, f"blocks.{l}.", last_only and l == n - 1)
        logits = x @ self.unembed.W_U + self.unembed.b_U
        return logits[:, -1] if last_only else logits

    def run_with_cache(
        self, tokens: torch.Tensor, names: list[str] | None = None, last_only: bool = False
    ):
        """Forward pass recording activations. Returns (logits [B, 3, vocab_out], {name: tensor}).

        Mirrors HookedTransformer.run_with_cache: cache[name] has shape [B, pos, ...]; with
        last_only=True the last block's post-attention hooks have pos = 1 and logits are
        [B, vocab_out].
        """
        cache: dict[str, torch.Tensor] = {}
        logits = self.forward(tokens, last_only, _Ctx(None, cache, set(names) if names else None))
        return logits, cache

    def run_with_hooks(
        self, tokens: torch.Tensor, fwd_hooks: list[tuple[str, HookFn]], last_only: bool = True
    ):
        """Forward pass where each (name, fn) replaces the activation at `name` by
        fn(activation)."""
        return self.forward(tokens, last_only, _Ctx(dict(fwd_hooks), None, None))
