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
alone; Adam is elementwise, so the optimiser state is per-seed too (tests/sae/test_sae_train.py).

Architectures (one file per family, each registering itself with husai.sae.family; the base
StackedSAE is in husai.sae.base):
  TopKSAE        Gao et al. 2024, sec. 2.3: z = ReLU(TopK_k(pre)); AuxK loss for dead latents.
  BatchTopKSAE   Bussmann et al. 2024: keep the k*B largest pre-activations of the whole batch;
                 at inference a JumpReLU with a learned global threshold (as SAELens saves it).
  MatryoshkaSAE  Bussmann et al. 2025: BatchTopK in which every nested prefix of the dictionary
                 must reconstruct the input on its own (these two: husai.sae.batchtopk).
  ReLUSAE        z = ReLU(pre); loss = MSE + l1_coeff * sum_i z_i ||W_dec,i|| (Anthropic, April
                 2024 update: the L1 is weighted by decoder norms, the decoder is unconstrained).
  JumpReLUSAE    Rajamanoharan et al. 2024 ("Jumping Ahead"): z = pre * H(pre - theta), loss =
                 MSE + l0_coeff * ||z||_0, trained with straight-through pseudo-derivatives
                 (sec. 4; husai.sae.jumprelu).
"""

from __future__ import annotations

from husai.sae.base import StackedSAE

# One import per family: importing its module registers it (husai.sae.family), and the import order
# is the registry's, which orders the results table's columns, the legends and the help texts.
# isort: off
from husai.sae.topk import TopKSAE
from husai.sae.batchtopk import BatchTopKSAE, MatryoshkaSAE
from husai.sae.relu import ReLUSAE
from husai.sae.jumprelu import JumpReLUSAE
# isort: on

__all__ = ["StackedSAE", "TopKSAE", "BatchTopKSAE", "MatryoshkaSAE", "ReLUSAE", "JumpReLUSAE"]
