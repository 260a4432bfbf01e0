"""Sparse autoencoders, stacked over S seeds: one SAE is simply S = 1.

Every parameter carries a leading seed axis, so S independent SAEs train in one pass with one
matmul per layer per step (openai/sparse_autoencoder style shapes):

    W_enc [S, d_in, d_sae]   b_enc [S, d_sae]   W_dec [S, d_sae, d_in]   b_dec [S, d_in]
    (W_enc is a view of the stored W_enc_T [S, d_sae, d_in], see StackedSAE)

    pre   = (x - b_dec) @ W_enc + b_enc                                   [S, B, d_sae]
    z     = activation(pre)            (architecture-specific, below)     [S, B, d_sae]
    x_hat = z @ W_dec + b_dec                                             [S, B, d_in]

An input batch x [B, d_in] is shared by all seeds (it broadcasts against b_dec [S, 1, d_in]).
Each seed's loss depends only on its own slice of the parameters, and the training loss is the
sum of the per-seed losses, so every seed's gradient is exactly what it would be if trained
alone; Adam is elementwise, so the optimiser state is per-seed too (tests/test_sae_train.py).

Architectures (each a small class; the base StackedSAE is in husai.sae_base):
  TopKSAE        Gao et al. 2024, sec. 2.3: z = ReLU(TopK_k(pre)); AuxK loss for dead latents.
  BatchTopKSAE   Bussmann et al. 2024: keep the k*B largest pre-activations of the whole batch;
                 at inference a JumpReLU with a learned global threshold (as SAELens saves it).
  MatryoshkaSAE  Bussmann et al. 2025: BatchTopK in which every nested prefix of the dictionary
                 must reconstruct the input on its own (the three: husai.sae_topk).
  ReLUSAE        z = ReLU(pre); loss = MSE + l1_coeff * sum_i z_i ||W_dec,i|| (Anthropic, April
                 2024 update: the L1 is weighted by decoder norms, the decoder is unconstrained).
  JumpReLUSAE    Rajamanoharan et al. 2024 ("Jumping Ahead"): z = pre * H(pre - theta), loss =
                 MSE + l0_coeff * ||z||_0, trained with straight-through pseudo-derivatives
                 (sec. 4; husai.sae_jumprelu).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .sae_base import StackedSAE
from .sae_jumprelu import JumpReLUSAE
from .sae_topk import BatchTopKSAE, MatryoshkaSAE, TopKSAE

__all__ = ["StackedSAE", "TopKSAE", "BatchTopKSAE", "MatryoshkaSAE", "ReLUSAE", "JumpReLUSAE",
           "ARCHITECTURES", "K_ARCHITECTURES", "geometric_median"]


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


ARCHITECTURES = {c.architecture: c for c in (TopKSAE, BatchTopKSAE, MatryoshkaSAE, ReLUSAE, JumpReLUSAE)}
K_ARCHITECTURES = ("topk", "batchtopk", "matryoshka")  # the ones whose sparsity knob is k


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
