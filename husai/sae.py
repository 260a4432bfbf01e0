"""Sparse autoencoders, stacked over S seeds: one SAE is simply S = 1.

Every parameter carries a leading seed axis, so S independent SAEs train in one pass with one
batched matmul (torch.baddbmm) per layer per step (openai/sparse_autoencoder style shapes):

    W_enc [S, d_in, d_sae]   b_enc [S, d_sae]   W_dec [S, d_sae, d_in]   b_dec [S, d_in]

    pre   = (x - b_dec) @ W_enc + b_enc                                   [S, B, d_sae]
    z     = activation(pre)            (architecture-specific, below)     [S, B, d_sae]
    x_hat = z @ W_dec + b_dec                                             [S, B, d_in]

An input batch x [B, d_in] is shared by all seeds (it broadcasts against b_dec [S, 1, d_in]).
Each seed's loss depends only on its own slice of the parameters, and the training loss is the
sum of the per-seed losses, so every seed's gradient is exactly what it would be if trained
alone; Adam is elementwise, so the optimiser state is per-seed too (tests/test_sae_train.py).

Architectures (each a small class):
  TopKSAE       Gao et al. 2024, sec. 2.3: z = ReLU(TopK_k(pre)); AuxK loss for dead latents.
  BatchTopKSAE  Bussmann et al. 2024: keep the k*B largest pre-activations of the whole batch;
                at inference a JumpReLU with a learned global threshold (as SAELens saves it).
  ReLUSAE       z = ReLU(pre); loss = MSE + l1_coeff * sum_i z_i ||W_dec,i|| (Anthropic, April
                2024 update: the L1 is weighted by decoder norms, the decoder is unconstrained).
  JumpReLUSAE   Rajamanoharan et al. 2024 ("Jumping Ahead"): z = pre * H(pre - theta), loss =
                MSE + l0_coeff * ||z||_0, trained with straight-through pseudo-derivatives (sec. 4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StackedSAE(nn.Module):
    """Base class: parameters, init, encode/decode. Subclasses define `activate` and the loss."""

    architecture = "base"
    unit_norm_decoder = True  # keep decoder rows unit-norm during training (Gao et al. sec. 2.3)
    normalized_mse = False  # reconstruction loss as FVU (see training_loss)

    def __init__(self, n_seeds: int, d_in: int, d_sae: int):
        super().__init__()
        self.n_seeds, self.d_in, self.d_sae = n_seeds, d_in, d_sae
        self.W_enc = nn.Parameter(torch.zeros(n_seeds, d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(n_seeds, d_sae))
        self.W_dec = nn.Parameter(torch.zeros(n_seeds, d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(n_seeds, d_in))
        self.hparams: dict = {}  # constructor arguments beyond (n_seeds, d_in, d_sae)

    @torch.no_grad()
    def init_weights(self, seeds: list[int], b_dec_init: torch.Tensor, data: torch.Tensor | None = None) -> "StackedSAE":
        """Gao et al. sec. 2.3: W_dec rows random unit vectors, W_enc = W_dec^T, b_enc = 0,
        b_dec = b_dec_init [d_in] (the geometric median of the data).

        data [N, d_in] (optional): draw each decoder row as a random centred data point
        (x_n - b_dec_init, normalised) instead of an isotropic direction. For low-rank
        activations (a grokked model's residual stream: ~20 directions hold 99.9% of the
        variance) isotropic latents mostly point out of the data subspace and never win a top-k.

        Each seed draws from its own CPU torch.Generator, so seed 42's SAE is the same whichever
        seeds are trained beside it, and on every device.
        """
        assert len(seeds) == self.n_seeds
        for s, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(int(seed))
            W = torch.randn(self.d_sae, self.d_in, generator=gen)  # [d_sae, d_in]
            if data is not None:
                rows = data[torch.randint(data.shape[0], (self.d_sae,), generator=gen)].cpu() - b_dec_init.cpu()
                rows = rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-8)
                W = rows + 0.1 * W / W.norm(dim=1, keepdim=True)  # jitter: duplicates must differ
            W = W / W.norm(dim=1, keepdim=True)
            self.W_dec[s].copy_(W)
            self.W_enc[s].copy_(W.T)
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec_init.to(self.b_dec).expand(self.n_seeds, -1))
        return self

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d_in] or [S, B, d_in] -> pre-activations [S, B, d_sae].

        Computed as x @ W_enc + (b_enc - b_dec @ W_enc), equal to (x - b_dec) @ W_enc + b_enc:
        x needs no gradient, so backward skips the [B, d_sae] x [d_sae, d_in] matmul that the
        centred form would spend on d(x - b_dec); b_dec's gradient comes from a matrix-vector.
        """
        S, d_in = self.n_seeds, self.d_in
        # A real copy per seed: bmm over a stride-0 batch falls off the BLAS path (measured 9x
        # slower per seed at S = 5); the copy is only [S, B, d_in].
        x = x.expand(S, -1, d_in).contiguous() if x.ndim == 2 else x
        bias = self.b_enc - torch.bmm(self.b_dec.unsqueeze(1), self.W_enc).squeeze(1)  # [S, d_sae]
        return torch.baddbmm(bias.unsqueeze(1), x, self.W_enc)

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        """pre [S, B, d_sae] -> latents z [S, B, d_sae] (non-negative)."""
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d_in] or [S, B, d_in] -> z [S, B, d_sae] (inference-time activation)."""
        return self.activate(self.pre_acts(x), training=False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [S, B, d_sae] -> x_hat [S, B, d_in]."""
        return torch.baddbmm(self.b_dec.unsqueeze(1), z, self.W_dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d_in] -> reconstruction x_hat [S, B, d_in]."""
        return self.decode(self.encode(x))

    def sparsity_loss(self, x, pre, z, x_hat, dead) -> torch.Tensor:
        """Per-seed auxiliary/sparsity loss [S]; zero by default."""
        return x_hat.new_zeros(self.n_seeds)

    def training_loss(self, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """x [B, d_in], dead [S, d_sae] bool -> (sum over seeds of the loss, per-seed stats).

        MSE is per-sample squared error summed over d_in, averaged over the batch (SAELens's
        convention). With `normalized_mse` (TopK family) the reconstruction term is MSE divided
        by the batch's total variance, i.e. the fraction of variance unexplained, as in Gao et
        al. sec. 2.1 and sparsify: the AuxK term is normalised the same way, so its coefficient
        1/32 means the same thing whatever the scale of the activations.
        Stats (detached, shape [S]): loss, mse, l0, ev; plus fired [S, d_sae] (bool: the latent
        fired on some input of the batch).
        """
        pre = self.pre_acts(x)
        z = self.activate(pre, training=True)
        x_hat = self.decode(z)
        mse = (x_hat - x).pow(2).sum(-1).mean(1)  # [S]
        with torch.no_grad():
            var = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)  # batch total variance
        recon = mse / var if self.normalized_mse else mse
        loss = recon + self.sparsity_loss(x, pre, z, x_hat, dead)
        with torch.no_grad():
            stats = dict(loss=loss.detach(), mse=mse.detach(), l0=(z > 0).float().sum(-1).mean(1),
                         ev=1 - mse.detach() / var, fired=(z > 0).any(1))
        return loss.sum(), stats

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Drop the component of each decoder row's gradient parallel to the row (Gao et al.
        sec. 2.3), so the Adam step moves along the unit sphere rather than off it."""
        if self.unit_norm_decoder and self.W_dec.grad is not None:
            W, G = self.W_dec, self.W_dec.grad
            G.sub_((G * W).sum(-1, keepdim=True) * W)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Renormalise decoder rows to unit norm after each step."""
        if self.unit_norm_decoder:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8))

    @torch.no_grad()
    def after_step(self, stats: dict) -> None:
        self.normalize_decoder()

    def select(self, s: int) -> "StackedSAE":
        """A copy holding only seed slot s (S = 1), e.g. to save or evaluate one seed."""
        one = type(self)(1, self.d_in, self.d_sae, **self.hparams)
        one.load_state_dict({k: v.detach()[s:s + 1].clone() for k, v in self.state_dict().items()})
        return one


def _auxk_loss(x, x_hat, pre, W_dec, dead, k_aux: int) -> torch.Tensor:
    """Gao et al. sec. A.2 AuxK: reconstruct the residual e = x - x_hat (detached) from the top
    k_aux pre-activations among dead latents; normalised by the residual's variance. -> [S]."""
    S, B, d_sae = pre.shape
    if not bool(dead.any()):
        return pre.new_zeros(S)
    k_aux = min(k_aux, d_sae)
    e = (x - x_hat).detach()  # [S, B, d_in]
    masked = pre.masked_fill(~dead.unsqueeze(1), float("-inf"))
    vals, idx = masked.topk(k_aux, dim=-1, sorted=False)  # [S, B, k_aux]
    z_aux = torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))  # relu(-inf) = 0 when few dead
    e_hat = torch.bmm(z_aux, W_dec)
    err = (e_hat - e).pow(2).sum(-1).mean(1)
    var = (e - e.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).clamp_min(1e-12)
    # A seed with no dead latent gets no aux loss (its masked row is all -inf -> z_aux = 0, but
    # e_hat = 0 would still give err = ||e||^2, so zero it explicitly).
    return torch.where(dead.any(-1), err / var, torch.zeros_like(err))


class TopKSAE(StackedSAE):
    """z = ReLU(TopK_k(pre)) per input (Gao et al. 2024, eq. 3); loss = MSE + aux_coeff * AuxK."""

    architecture = "topk"
    normalized_mse = True

    def __init__(self, n_seeds: int, d_in: int, d_sae: int, k: int, k_aux: int | None = None,
                 aux_coeff: float = 1 / 32):
        super().__init__(n_seeds, d_in, d_sae)
        self.k, self.aux_coeff = k, aux_coeff
        self.k_aux = k_aux if k_aux is not None else max(1, d_in // 2)  # Gao et al. A.2: ~d_model/2
        self.hparams = dict(k=k, k_aux=k_aux, aux_coeff=aux_coeff)

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))

    def sparsity_loss(self, x, pre, z, x_hat, dead) -> torch.Tensor:
        return self.aux_coeff * _auxk_loss(x, x_hat, pre, self.W_dec, dead, self.k_aux)

    def select_latents(self, pre: torch.Tensor):
        """pre [S, B, d_sae] -> (vals [S, M] >= 0, rows [S, M], cols [S, M]): the active latents
        as a coordinate list, M = B * k; vals keep their gradient."""
        S, B, _ = pre.shape
        vals, cols = pre.topk(self.k, dim=-1, sorted=False)  # [S, B, k]
        rows = torch.arange(B, device=pre.device).repeat_interleave(self.k).expand(S, -1)
        return F.relu(vals).reshape(S, -1), rows, cols.reshape(S, -1)

    def decode_sparse(self, vals, rows, cols, B: int) -> torch.Tensor:
        """x_hat[s, b] = b_dec[s] + sum over entries m with rows[s, m] = b of vals[s, m] W_dec[s, cols[s, m]].

        One fused F.embedding_bag over the stacked decoder [S * d_sae, d_in]: forward and backward
        touch only the B*k active rows instead of a dense [B, d_sae] x [d_sae, d_in] matmul
        (Gao et al. sec. 5.3 use sparse kernels for the same reason). rows must be sorted per seed.
        """
        S, M = vals.shape
        off = torch.arange(S, device=vals.device).unsqueeze(1)
        idx = (cols + off * self.d_sae).reshape(-1)
        bags = (rows + off * B).reshape(-1)
        offsets = torch.cumsum(torch.bincount(bags, minlength=S * B), 0) - torch.bincount(bags, minlength=S * B)
        out = F.embedding_bag(idx, self.W_dec.reshape(S * self.d_sae, self.d_in), offsets,
                              mode="sum", per_sample_weights=vals.reshape(-1))
        return out.view(S, B, self.d_in) + self.b_dec.unsqueeze(1)

    def _dead_topk(self, pre: torch.Tensor, dead: torch.Tensor):
        """Top-k_aux pre-activations among dead latents: (vals [S, B, k_aux], cols [S, B, k_aux]).
        Searches only the dead columns (padded to the largest dead count with -inf), which is
        much cheaper than a top-k over all d_sae when few latents are dead."""
        S, B, d_sae = pre.shape
        n_dead = int(dead.sum(1).max())
        k_aux = min(self.k_aux, d_sae)
        if n_dead > d_sae // 2:
            return pre.masked_fill(~dead.unsqueeze(1), float("-inf")).topk(k_aux, dim=-1, sorted=False)
        n = max(n_dead, k_aux)
        dead_first = torch.sort(dead.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :n]  # [S, n]
        is_dead = dead.gather(1, dead_first).unsqueeze(1)  # padding columns are live: masked out
        cand = pre.gather(2, dead_first.unsqueeze(1).expand(S, B, n)).masked_fill(~is_dead, float("-inf"))
        vals, j = cand.topk(k_aux, dim=-1, sorted=False)
        return vals, dead_first.unsqueeze(1).expand(S, B, n).gather(2, j)

    def training_loss(self, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Same loss as StackedSAE.training_loss (FVU + aux_coeff * AuxK), computed sparsely."""
        S, B = self.n_seeds, x.shape[0]
        pre = self.pre_acts(x)
        vals, rows, cols = self.select_latents(pre)
        x_hat = self.decode_sparse(vals, rows, cols, B)
        mse = (x_hat - x).pow(2).sum(-1).mean(1)  # [S]
        with torch.no_grad():
            var = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
        loss = mse / var
        if bool(dead.any()):
            e = (x - x_hat).detach()
            avals, acols = self._dead_topk(pre, dead)  # [S, B, k_aux]
            arows = torch.arange(B, device=x.device).repeat_interleave(acols.shape[-1]).expand(S, -1)
            e_hat = self.decode_sparse(F.relu(avals).reshape(S, -1), arows, acols.reshape(S, -1), B) - self.b_dec.unsqueeze(1)
            err = (e_hat - e).pow(2).sum(-1).mean(1)
            evar = (e - e.mean(1, keepdim=True)).pow(2).sum(-1).mean(1).clamp_min(1e-12)
            loss = loss + self.aux_coeff * torch.where(dead.any(-1), err / evar, torch.zeros_like(err))
        with torch.no_grad():
            active = vals > 0
            fired = torch.zeros(S, self.d_sae, device=x.device).scatter_add_(1, cols, active.float()) > 0
            stats = dict(loss=loss.detach(), mse=mse.detach(), l0=active.float().sum(1) / B,
                         ev=1 - mse.detach() / var, fired=fired,
                         min_active=torch.where(active, vals.detach(), torch.full_like(vals, float("inf"))).min(1).values)
        return loss.sum(), stats


class BatchTopKSAE(TopKSAE):
    """Training: per seed, keep the k*B largest pre-activations across the whole batch (ReLU'd),
    so the *average* L0 is k (Bussmann et al. 2024, sec. 3). Inference: z = ReLU(pre) * (pre >
    threshold[s]) with threshold an EMA of the smallest kept activation per batch (SAELens's
    estimator, rate `threshold_lr`)."""

    architecture = "batchtopk"

    def __init__(self, n_seeds: int, d_in: int, d_sae: int, k: int, k_aux: int | None = None,
                 aux_coeff: float = 1 / 32, threshold_lr: float = 0.01):
        super().__init__(n_seeds, d_in, d_sae, k, k_aux, aux_coeff)
        self.threshold_lr = threshold_lr
        self.hparams["threshold_lr"] = threshold_lr
        self.register_buffer("threshold", torch.zeros(n_seeds))  # [S]

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        if not training:
            return F.relu(pre) * (pre > self.threshold.view(-1, 1, 1))
        S, B, d_sae = pre.shape
        flat = pre.reshape(S, B * d_sae)
        vals, idx = flat.topk(min(self.k * B, B * d_sae), dim=-1, sorted=False)
        return torch.zeros_like(flat).scatter(-1, idx, F.relu(vals)).view(S, B, d_sae)

    def select_latents(self, pre: torch.Tensor):
        """The k*B largest pre-activations of each seed's batch, as a coordinate list sorted by row."""
        S, B, d_sae = pre.shape
        vals, flat = pre.reshape(S, B * d_sae).topk(min(self.k * B, B * d_sae), dim=-1, sorted=False)
        flat, order = flat.sort(dim=1)  # group by input row for embedding_bag
        return F.relu(vals.gather(1, order)), flat // d_sae, flat % d_sae

    @torch.no_grad()
    def after_step(self, stats: dict) -> None:
        super().after_step(stats)
        pos = stats["min_active"]  # [S]: smallest positive kept activation (inf if none)
        fired = torch.isfinite(pos)
        lr = self.threshold_lr
        self.threshold.copy_(torch.where(fired, (1 - lr) * self.threshold + lr * pos, self.threshold))


class ReLUSAE(StackedSAE):
    """z = ReLU(pre); loss = MSE + l1_coeff * sum_i z_i * ||W_dec,i|| (decoder-norm-weighted L1,
    so shrinking z while growing W_dec cannot cheat the penalty; the decoder is unconstrained)."""

    architecture = "relu"
    unit_norm_decoder = False

    def __init__(self, n_seeds: int, d_in: int, d_sae: int, l1_coeff: float):
        super().__init__(n_seeds, d_in, d_sae)
        self.l1_coeff = l1_coeff
        self.hparams = dict(l1_coeff=l1_coeff)

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        return F.relu(pre)

    def sparsity_loss(self, x, pre, z, x_hat, dead) -> torch.Tensor:
        norms = self.W_dec.norm(dim=-1).unsqueeze(1)  # [S, 1, d_sae]
        return self.l1_coeff * (z * norms).sum(-1).mean(1)


# JumpReLU lives in its own module (it needs two autograd functions); imported here, after
# StackedSAE exists, so that every architecture is reachable from husai.sae.
from .sae_jumprelu import JumpReLUSAE  # noqa: E402

ARCHITECTURES = {c.architecture: c for c in (TopKSAE, BatchTopKSAE, ReLUSAE, JumpReLUSAE)}


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: argmin_m sum_n ||x_n - m||. x [N, d] -> [d] (float64 inside)."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-12)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        if (m_new - m).norm() <= tol * max(1.0, float(m.norm())):
            m = m_new
            break
        m = m_new
    return m.float()
