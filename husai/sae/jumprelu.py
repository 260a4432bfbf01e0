"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead"): z = pre * H(pre - theta), an L0
penalty, and straight-through pseudo-derivatives through the step with a rectangle kernel of width
eps.

Shapes as in husai.sae.architectures: pre [S, B, d_sae], theta [S, d_sae]. Its config keys
(JumpReLUConfig) and its registration are at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from husai.errors import HusaiError
from husai.sae.base import PenalisedSAE, batch_variance
from husai.sae.family import Family, PenaltyConfig, register
from husai.sae.sparse import (
    DENSE_ABOVE,
    Codes,
    decode,
    dense_pre,
    encode_at,
    entries_above,
    sparse_stats,
)


class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - theta). Backward (Rajamanoharan et al. 2024, eq. 11): d z/d pre = H(pre -
    theta) (straight through); d z/d theta = -(theta/eps) K((pre - theta)/eps), K = rectangle."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        eps = ctx.eps
        rect = ((pre - theta).abs() < eps / 2).to(g)
        g_theta = (-(theta / eps) * rect * g).sum(1, keepdim=True)
        return (pre > theta).to(g) * g, g_theta, None


class _Step(torch.autograd.Function):
    """H(pre - theta), with d/d theta = -(1/eps) K((pre - theta)/eps) and no gradient to pre
    (Rajamanoharan et al. 2024, eq. 12)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre)

    @staticmethod
    def backward(ctx, g):
        pre, theta = ctx.saved_tensors
        rect = ((pre - theta).abs() < ctx.eps / 2).to(g)
        return None, (-(1.0 / ctx.eps) * rect * g).sum(1, keepdim=True), None


class _JumpReLUEntries(torch.autograd.Function):
    """_JumpReLU on a coordinate list: pre, theta [S, M] (theta gathered per entry, so autograd of
    the gather scatters its gradient back to the latents), valid [S, M] (False: padding, which gets
    no gradient). Entries below theta have z = 0 but still pass their d L/d z to theta when inside
    the kernel window, exactly as the dense function's sum over the batch does."""

    @staticmethod
    def forward(ctx, pre, theta, valid, eps):
        ctx.save_for_backward(pre, theta, valid)
        ctx.eps = eps
        return pre * (pre > theta)

    @staticmethod
    def backward(ctx, g):
        pre, theta, valid = ctx.saved_tensors
        eps = ctx.eps
        rect = (((pre - theta).abs() < eps / 2) & valid).to(g)
        return (pre > theta).to(g) * g, -(theta / eps) * rect * g, None, None


class _StepEntries(torch.autograd.Function):
    """_Step on a coordinate list (shapes as _JumpReLUEntries): H(pre - theta), d/d theta =
    -(1/eps) K((pre - theta)/eps), no gradient to pre."""

    @staticmethod
    def forward(ctx, pre, theta, valid, eps):
        ctx.save_for_backward(pre, theta, valid)
        ctx.eps = eps
        return (pre > theta).to(pre)

    @staticmethod
    def backward(ctx, g):
        pre, theta, valid = ctx.saved_tensors
        rect = (((pre - theta).abs() < ctx.eps / 2) & valid).to(g)
        return None, -(1.0 / ctx.eps) * rect * g, None, None


class _DenseJumpReLU(torch.autograd.Function):
    """_JumpReLU and _Step's L0 in one function, for a training step too dense for the sparse path:
    z = pre * H(pre - theta) [S, B, d], l0 = mean over the batch of sum_i H [S], fired = any over
    the batch of H [S, d] (no gradient). The backward is the two functions' together,
        d pre   = H(pre - theta) g_z
        d theta = -(theta/eps) sum_b K g_z - (1/eps) (g_l0 / B) sum_b K,
                  K = |pre - theta| < eps/2,
    in ~8 passes over [S, B, d] where the two separate functions and their float masks took ~20
    (the dense steps are the first ~300 of a 2,000-step run from random init)."""

    @staticmethod
    def forward(ctx, pre, theta, eps):
        # masks as float 1/0, never bool: on this CPU build a comparison into a bool tensor took
        # 220 us for [5, 64, 2048] and into a float one 67, a torch.where on a bool mask ~1 ms
        # against 63 us for a multiply by a float mask, any(1) on bool 413 us against 74 (measured,
        # 2 threads)
        above = torch.gt(pre, theta.unsqueeze(1), out=torch.empty_like(pre))
        ctx.save_for_backward(pre, theta, above)
        ctx.eps = eps
        fired = above.amax(1) > 0
        ctx.mark_non_differentiable(fired)
        l0 = above.sum(-1).mean(1)  # sums of 1.0s: exact, as the count
        return pre * above, l0, fired

    @staticmethod
    def backward(ctx, g_z, g_l0, _):
        pre, theta, above = ctx.saved_tensors
        eps, B = ctx.eps, pre.shape[1]
        window = (pre - theta.unsqueeze(1)).abs_().lt_(eps / 2)  # K as float 1/0, in place
        g_theta = -(theta / eps) * (g_z * window).sum(1)
        if g_l0 is not None:
            g_theta = g_theta - (g_l0 / (B * eps)).unsqueeze(1) * window.sum(1)
        return g_z * above, g_theta, None


class JumpReLUSAE(PenalisedSAE):
    """z = pre * H(pre - theta) with a learned per-latent threshold theta [S, d_sae] > 0;
    loss = MSE + l0_coeff * sum_i H(pre_i - theta_i) (Rajamanoharan et al. 2024, sec. 3-4).
    bandwidth and init_threshold are in activation units; the defaults suit the grokked model's
    residual stream (pre-activations of tens; the paper's 1e-3 assumes normalised inputs)."""

    architecture = "jumprelu"
    coeff_name = "l0_coeff"
    dense_above: float | None = DENSE_ABOVE  # husai.sae.sparse.entries_above; None: always sparse

    def __init__(
        self,
        n_seeds: int,
        d_in: int,
        d_sae: int,
        l0_coeff: float | list[float],
        bandwidth: float = 2.0,
        init_threshold: float = 1.0,
    ):
        super().__init__(n_seeds, d_in, d_sae)
        self._set_coeff(n_seeds, l0_coeff)  # one per slot (PenalisedSAE)
        self.bandwidth = bandwidth
        self.hparams = dict(l0_coeff=l0_coeff, bandwidth=bandwidth, init_threshold=init_threshold)
        # theta = exp(log_threshold), as SAELens trains it: Adam then moves theta by a fraction of
        # itself per step, so a threshold can grow from 0.1 to tens within a short run (a linear
        # parameter moved ~lr per step: 0.5 -> 0.65 in 1,000 steps on the grokked model, measured).
        self.log_threshold = nn.Parameter(torch.full((n_seeds, d_sae), math.log(init_threshold)))

    @property
    def threshold(self) -> torch.Tensor:
        """theta [S, d_sae] > 0."""
        return self.log_threshold.exp()

    def activate(self, pre: torch.Tensor, training: bool = False) -> torch.Tensor:
        theta = self.threshold.unsqueeze(1)  # [S, 1, d_sae]
        if training:
            return _JumpReLU.apply(pre, theta, self.bandwidth)
        return pre * (pre > theta)

    def sparsity_loss(self, x, pre, z, x_hat, dead) -> torch.Tensor:
        l0 = _Step.apply(pre, self.threshold.unsqueeze(1), self.bandwidth).sum(-1).mean(1)
        return self.coeff * l0

    def training_loss(self, x: torch.Tensor, dead: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Same loss, stats and gradients as StackedSAE.training_loss (the dense reference), on
        the entries that can matter: pre > theta (z != 0) and the kernel window
        |pre - theta| < eps/2 (theta's pseudo-gradient, from entries below theta too).
        x [B, d_in] (shared) or [S, B, d_in] (per seed).

        The list takes pre > theta - eps/2 - 1e-5 (eps/2 + theta), a little below the window:
        `(pre - theta).abs() < eps/2` is evaluated in floating point, and the margin (far above
        its rounding) makes sure no entry the dense formula counts is missed. Entries between the
        margin and the window, and the padding (valid False), have z = 0 and no gradient."""
        B, eps = x.shape[-2], self.bandwidth
        theta = self.threshold  # [S, d_sae], with autograd to log_threshold
        with torch.no_grad():
            pre = self.pre_acts(x, reuse_buffer=True)  # [S, B, d_sae], valid until the next step
            lowest = theta - eps / 2 - 1e-5 * (eps / 2 + theta.abs())
            found = entries_above(pre, lowest, self.dense_above)
        if found is None:
            return self._dense_loss(
                x, dense_pre(pre, self.W_enc_T, self.b_enc, self.b_dec, x), theta
            )
        pvals, rows, cols, counts = found
        with torch.no_grad():
            valid = torch.arange(pvals.shape[1], device=x.device) < counts.unsqueeze(1)
        codes = Codes(rows, cols, B, self.d_sae)
        pre_m = encode_at(pvals, self.W_enc_T, self.b_enc, self.b_dec, x, codes)  # [S, M]
        theta_m = theta.gather(1, cols)
        z = _JumpReLUEntries.apply(pre_m, theta_m, valid, eps)
        x_hat = decode(z, self.W_dec, codes) + self.b_dec.unsqueeze(1)
        mse = (x_hat - x).pow(2).sum(-1).mean(1)  # [S]
        l0 = _StepEntries.apply(pvals, theta_m, valid, eps).sum(1) / B
        loss = mse + self.coeff * l0
        return loss.sum(), sparse_stats(loss, mse, batch_variance(x), z, cols, B, self.d_sae)

    def _dense_loss(
        self, x: torch.Tensor, pre: torch.Tensor, theta: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """StackedSAE.loss_from_pre for this architecture, with activation and L0 fused
        (_DenseJumpReLU)."""
        z, l0, fired = _DenseJumpReLU.apply(pre, theta, self.bandwidth)
        mse = (self.decode(z) - x).pow(2).sum(-1).mean(1)  # [S]
        loss = mse + self.coeff * l0
        var = batch_variance(x)
        stats = dict(
            loss=loss.detach(),
            mse=mse.detach(),
            l0=l0.detach().float(),
            ev=1 - mse.detach() / var,
            fired=fired,
        )
        return loss.sum(), stats

    def saelens_form(self, slot: int) -> tuple[str, dict, dict]:
        """SAELens's jumprelu SAE, with this slot's per-latent thresholds."""
        return "jumprelu", {"threshold": self.threshold[slot]}, {}


@dataclass
class JumpReLUConfig(PenaltyConfig):
    """The JumpReLU SAE's keys: the L0 weight, the kernel width, the initial threshold,
    target_l0."""

    sparsity_key = "l0_coeff"
    knob_prefix = "l0"
    columns = ("target_l0", "l0_coeff")

    l0_coeff: float = 8.0
    """Weight of the L0 penalty (absolute, like l1_coeff)."""
    jumprelu_bandwidth: float = 2.0
    """Width eps of the rectangle kernel in the pseudo-derivatives (Rajamanoharan et al. sec. 4), in
    activation units: scale it with the pre-activations (here tens)."""
    jumprelu_init_threshold: float = 1.0
    """Initial threshold of every latent (> 0; learned as its logarithm)."""

    def validate(self, d_sae: int | None, width: str) -> None:
        super().validate(d_sae, width)
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
            if getattr(self, name) <= 0:
                raise HusaiError(f"config key {name!r} must be > 0, got {getattr(self, name)}")

    def build(self, n_seeds, d_in, d_sae, rescale, sparsity=None):
        return JumpReLUSAE(
            n_seeds,
            d_in,
            d_sae,
            self.l0_coeff if sparsity is None else sparsity,
            self.jumprelu_bandwidth,
            self.jumprelu_init_threshold,
        )


register(Family("jumprelu", JumpReLUConfig, JumpReLUSAE, label="JumpReLU", color="tab:orange"))
