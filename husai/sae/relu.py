"""The ReLU SAE: z = ReLU(pre), with an L1 penalty weighted by decoder norms (Anthropic, April 2024
update). The decoder is unconstrained, so the penalty, not a norm constraint, stops the trade of
a smaller z for a larger W_dec."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from husai.sae.base import StackedSAE


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
