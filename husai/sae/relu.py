"""The ReLU SAE: z = ReLU(pre), with an L1 penalty weighted by decoder norms (Anthropic, April 2024
update). The decoder is unconstrained, so the penalty, not a norm constraint, stops the trade of
a smaller z for a larger W_dec.

Training runs sparsely, as the TopK family's does (husai.sae.sparse): one dense no-grad pass for
the pre-activations, then only the entries above a threshold (`entries_above`, shared with the
JumpReLU SAE). The dense StackedSAE.training_loss is the reference the tests compare against.
Its config keys (ReLUConfig) and its registration are at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from husai.sae.base import PenalisedSAE, batch_variance
from husai.sae.family import Family, PenaltyConfig, register
from husai.sae.sparse import (
    DENSE_ABOVE,
    Codes,
    RowNorms,
    decode,
    dense_pre,
    encode_at,
    entries_above,
    sparse_stats,
)


class ReLUSAE(PenalisedSAE):
    """z = ReLU(pre); loss = MSE + l1_coeff * sum_i z_i * ||W_dec,i|| (decoder-norm-weighted L1,
    so shrinking z while growing W_dec cannot cheat the penalty; the decoder is unconstrained).
    l1_coeff: one for every slot or one per slot (PenalisedSAE)."""

    architecture = "relu"
    coeff_name = "l1_coeff"
    unit_norm_decoder = False
    dense_above: float | None = DENSE_ABOVE  # entries_above; None: always sparse

    def __init__(self, n_seeds: int, d_in: int, d_sae: int, l1_coeff: float | list[float]):
        super().__init__(n_seeds, d_in, d_sae)
        self._set_coeff(n_seeds, l1_coeff)
        self.hparams = dict(l1_coeff=l1_coeff)

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        return F.relu(pre)

    def sparsity_loss(self, x, pre, z, x_hat, dead) -> torch.Tensor:
        norms = self.W_dec.norm(dim=-1).unsqueeze(1)  # [S, 1, d_sae]
        return self.coeff * (z * norms).sum(-1).mean(1)

    def training_loss(self, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Same loss and stats as StackedSAE.training_loss (the dense reference), computed on the
        entries with pre > 0 only. x [B, d_in] (shared) or [S, B, d_in] (per seed).
        Padding entries have pre = 0: ReLU's gradient at 0 is 0 in torch, so they add nothing."""
        B = x.shape[-2]
        with torch.no_grad():
            pre = self.pre_acts(x, reuse_buffer=True)  # [S, B, d_sae], valid until the next step
            found = entries_above(pre, 0.0, self.dense_above)
        if found is None:
            return self.loss_from_pre(
                x, dense_pre(pre, self.W_enc_T, self.b_enc, self.b_dec, x), dead
            )
        pvals, rows, cols, _ = found
        codes = Codes(rows, cols, B, self.d_sae)
        z = F.relu(encode_at(pvals, self.W_enc_T, self.b_enc, self.b_dec, x, codes))  # [S, M]
        x_hat = decode(z, self.W_dec, codes) + self.b_dec.unsqueeze(1)
        mse = (x_hat - x).pow(2).sum(-1).mean(1)  # [S]
        norms = RowNorms.apply(self.W_dec)  # [S, d_sae]
        loss = mse + self.coeff * (z * norms.gather(1, cols)).sum(1) / B
        return loss.sum(), sparse_stats(loss, mse, batch_variance(x), z, cols, B, self.d_sae)

    def saelens_form(self, slot: int) -> tuple[str, dict, dict]:
        """SAELens's "standard" SAE: z = ReLU(pre)."""
        return "standard", {}, {}


@dataclass
class ReLUConfig(PenaltyConfig):
    """The ReLU SAE's keys: the L1 weight, and target_l0 (PenaltyConfig)."""

    sparsity_key = "l1_coeff"
    knob_prefix = "l1"
    columns = ("target_l0", "l1_coeff")
    training_defaults = {"lr": 1e-2}  # row_adam at 3e-3 sparsifies slower (BENCHMARKS.md)

    l1_coeff: float = 2.0
    """Weight of the decoder-norm-weighted L1 penalty. Absolute (the MSE is not normalised), so
    scale it with the activations' variance, or give target_l0 and let the search find it."""

    def build(self, n_seeds, d_in, d_sae, rescale, sparsity=None):
        return ReLUSAE(n_seeds, d_in, d_sae, self.l1_coeff if sparsity is None else sparsity)


register(Family("relu", ReLUConfig, ReLUSAE, label="ReLU", color="tab:red"))
