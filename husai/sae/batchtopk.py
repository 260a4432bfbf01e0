"""BatchTopK (Bussmann et al. 2024) and Matryoshka BatchTopK (Bussmann et al. 2025), stacked over S
seeds (shapes in husai.sae.architectures), with their config keys and registrations.

  BatchTopKSAE   keep the k*B largest pre-activations of the whole batch (an average L0 of k);
                 at inference a JumpReLU with a learned global threshold (as SAELens saves it).
  MatryoshkaSAE  BatchTopK whose nested dictionary prefixes must each reconstruct the input.

Both train with TopK's sparse step (husai.sae.topk says which code path is the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from husai.errors import HusaiError
from husai.sae.base import batch_variance
from husai.sae.family import Family, register
from husai.sae.sparse import topk_rows
from husai.sae.topk import TopKConfig, TopKSAE


class BatchTopKSAE(TopKSAE):
    """Training: per seed, keep the k*B largest pre-activations across the whole batch (ReLU'd),
    so the *average* L0 is k (Bussmann et al. 2024, sec. 3). Inference: z = ReLU(pre) * (pre >
    threshold[s]) with threshold an EMA of the smallest kept activation per batch (SAELens's
    estimator, rate `threshold_lr`), started at the first batch's value rather than at 0. From 0,
    a 24-step run ended with the threshold at 21% of its target: L0 150 for k = 8, EV -237
    (measured; from the first batch: L0 1.5, EV -1.7, an undertrained SAE either way). On the
    grokked model's 1,000-step runs both starts give the same SAE (EV 0.978, L0 28)."""

    architecture = "batchtopk"
    selection_adds_bias = False  # its batch-wide selection reads pre with the bias
    one_call_step = False
    tracks_min_active = True

    def __init__(
        self,
        n_seeds: int,
        d_in: int,
        d_sae: int,
        k: int | list[int],
        k_aux: int | None = None,
        aux_coeff: float = 1 / 32,
        threshold_lr: float = 0.01,
        rescale: bool = False,
    ):
        super().__init__(n_seeds, d_in, d_sae, k, k_aux, aux_coeff, rescale)
        self.threshold_lr = threshold_lr
        self.hparams["threshold_lr"] = threshold_lr
        self.register_buffer("threshold", torch.zeros(n_seeds))  # [S]
        self.register_buffer("threshold_updates", torch.zeros(n_seeds))  # [S] EMA updates so far

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        if not training:
            return F.relu(pre) * (pre > self.threshold.view(-1, 1, 1))
        S, B, d_sae = pre.shape
        flat = pre.reshape(S, B * d_sae)
        vals, idx = self._per_slot(*topk_rows(flat, min(self.k * B, B * d_sae)), per_k=B)
        return torch.zeros_like(flat).scatter(-1, idx, F.relu(vals)).view(S, B, d_sae)

    def select_latents(self, pre: torch.Tensor, bias: torch.Tensor | None = None):
        """The k*B largest pre-activations of each seed's batch, as a coordinate list sorted by
        row."""
        if bias is not None:
            pre = pre + bias.unsqueeze(1)
        S, B, d_sae = pre.shape
        vals, flat = self._per_slot(
            *topk_rows(pre.reshape(S, B * d_sae), min(self.k * B, B * d_sae)), per_k=B
        )
        flat, order = flat.sort(dim=1)  # group by input row for embedding_bag
        return vals.gather(1, order), flat // d_sae, flat % d_sae

    @torch.no_grad()
    def after_step(self, stats: dict) -> None:
        super().after_step(stats)
        pos = stats["min_active"]  # [S]: smallest positive kept activation (inf if none)
        fired = torch.isfinite(pos)
        lr = self.threshold_lr
        ema = torch.where(self.threshold_updates > 0, (1 - lr) * self.threshold + lr * pos, pos)
        self.threshold.copy_(torch.where(fired, ema, self.threshold))
        self.threshold_updates.add_(fired.to(self.threshold_updates.dtype))

    def saelens_form(self, slot: int) -> tuple[str, dict, dict]:
        """A JumpReLU with one threshold for every latent: what SAELens saves after BatchTopK
        training."""
        return "jumprelu", {"threshold": self.threshold[slot].expand(self.d_sae)}, {}


class MatryoshkaSAE(BatchTopKSAE):
    """BatchTopK with nested dictionaries (Bussmann et al. 2025, "Learning Multi-Level Features
    with Matryoshka Sparse Autoencoders", sec. 3): the latents are ordered, and every prefix
    0..widths[l]-1 must reconstruct x on its own, so general features settle in the first latents
    and are not absorbed by specific ones. widths [L], increasing, widths[-1] = d_sae:

        loss = sum_l FVU(x, b_dec + sum_{j < widths[l]} z_j W_dec,j) + aux_coeff * AuxK

    (SAELens's matryoshka_batchtopk sums the levels' MSEs the same way; husai's TopK family uses
    FVU, see StackedSAE.training_loss). Inference and the saved format are BatchTopK's (a
    JumpReLU with a global threshold), as SAELens saves it too.
    """

    architecture = "matryoshka"

    def __init__(
        self,
        n_seeds: int,
        d_in: int,
        d_sae: int,
        k: int | list[int],
        widths: list[int],
        k_aux: int | None = None,
        aux_coeff: float = 1 / 32,
        threshold_lr: float = 0.01,
        rescale: bool = False,
    ):
        super().__init__(n_seeds, d_in, d_sae, k, k_aux, aux_coeff, threshold_lr, rescale)
        widths = [int(w) for w in widths]
        if (
            not widths
            or widths[-1] != d_sae
            or any(a >= b for a, b in zip(widths, widths[1:]))
            or widths[0] < 1
        ):
            raise ValueError(
                f"matryoshka widths must increase strictly from >= 1 to d_sae = {d_sae}, got "
                f"{widths}"
            )
        self.widths, self.n_levels = widths, len(widths)
        self.hparams["widths"] = widths
        self.register_buffer("_inner", torch.tensor(widths[:-1]), persistent=False)

    def level_of(self, cols: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(cols, self._inner, right=True)  # widths[l-1] <= col < widths[l] -> l

    def sparsity_loss(self, x, pre, z, x_hat, dead) -> torch.Tensor:
        """Dense reference: AuxK plus the inner levels' FVUs (the outer level is the main term)."""
        var = batch_variance(x)
        W = self.unit_decoder()
        inner = sum(
            (
                (torch.bmm(z[..., :w], W[:, :w]) + self.b_dec.unsqueeze(1) - x)
                .pow(2)
                .sum(-1)
                .mean(1)
                for w in self.widths[:-1]
            ),
            x_hat.new_zeros(self.n_seeds),
        )
        return inner / var + super().sparsity_loss(x, pre, z, x_hat, dead)


MATRYOSHKA_GROWTH = 4  # width ratio between consecutive levels (husai's choice)


def matryoshka_widths(d_sae: int, levels: int, growth: int = MATRYOSHKA_GROWTH) -> list[int]:
    """Nested widths growing `growth`-fold per level up to d_sae:
    (2048, 4) -> [32, 128, 512, 2048]."""
    return [max(1, d_sae // growth ** (levels - 1 - l)) for l in range(levels)]


@dataclass
class BatchTopKConfig(TopKConfig):
    """BatchTopK's keys: TopK's and the inference threshold's rate."""

    batchtopk_threshold_lr: float = 0.01
    """EMA rate of the inference threshold (SAELens's estimator)."""

    def build(self, n_seeds, d_in, d_sae, rescale, sparsity=None):
        k = self.k if sparsity is None else sparsity
        return BatchTopKSAE(
            n_seeds,
            d_in,
            d_sae,
            k,
            self.k_aux,
            self.aux_coeff,
            self.batchtopk_threshold_lr,
            rescale,
        )


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    """Matryoshka's keys: BatchTopK's and the number of nested levels."""

    matryoshka_levels: int = 4
    """Nested dictionary widths, growing 4x per level up to d_sae (d_sae 2048, 4 levels: 32, 128,
    512, 2048). Bussmann et al. 2025 nest a few geometrically growing prefixes; the growth factor
    is husai's choice."""

    def validate(self, d_sae: int | None, width: str) -> None:
        super().validate(d_sae, width)
        if self.matryoshka_levels < 1:
            raise HusaiError(
                f"config key 'matryoshka_levels' must be >= 1, got {self.matryoshka_levels}"
            )
        need = MATRYOSHKA_GROWTH ** (self.matryoshka_levels - 1)
        if d_sae is not None and d_sae < need:
            raise HusaiError(
                f"config key 'matryoshka_levels': {self.matryoshka_levels} levels growing "
                f"{MATRYOSHKA_GROWTH}x need d_sae >= {need}, got d_sae = {d_sae}"
            )

    def build(self, n_seeds, d_in, d_sae, rescale, sparsity=None):
        k = self.k if sparsity is None else sparsity
        return MatryoshkaSAE(
            n_seeds,
            d_in,
            d_sae,
            k,
            matryoshka_widths(d_sae, self.matryoshka_levels),
            self.k_aux,
            self.aux_coeff,
            self.batchtopk_threshold_lr,
            rescale,
        )

    def cell_knob(self) -> str:
        return f"k{self.k}_levels{self.matryoshka_levels}"


register(
    Family(
        "batchtopk",
        BatchTopKConfig,
        BatchTopKSAE,
        label="BatchTopK",
        color="tab:cyan",
        rescalable=True,
    )
)
register(
    Family(
        "matryoshka",
        MatryoshkaConfig,
        MatryoshkaSAE,
        label="Matryoshka",
        color="tab:green",
        rescalable=True,
    )
)
