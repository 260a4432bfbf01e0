"""The SAE optimisers (SAETrainConfig.optimizer): torch's Adam, and RowAdam, which keeps one second
moment per activation-space row and so makes training rotation-equivariant.

Why. Adam divides each coordinate's step by that coordinate's own gradient scale, so its update is
not a function of the geometry alone: training on X R (R orthogonal) is not training on X rotated.
On the grokked model's residual stream in its PCA basis (coordinate variances 402 down to 1e-6)
directions with ~zero data variance take full-size noise steps: TopK 16x EV 0.983 -> 0.932
(BENCHMARKS.md, "Training in any basis").

RowAdam. For a parameter whose rows live in activation space (W_enc_T, W_dec [S, d_sae, d_in],
b_dec [S, d_in]: the last axis is d_in), per row w with gradient g [d_in], step t:

    m <- beta1 m + (1 - beta1) g                     [d_in]   first moment, per coordinate (Adam's)
    v <- beta2 v + (1 - beta2) ||g||^2 / d_in        scalar   second moment, one per row
    w <- w - lr (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)

If every row's gradient is rotated (g -> g R, as it is when the data and the rows are), m rotates
with it and v does not change, so the update rotates: the SAE trained on X R is the one trained on X
with its rows times R (tests/sae/test_sae_optim.py checks it to float32 rounding). It is Adam with
the second-moment EMA taken over whole rows (a coarser factoring than Adafactor's row-and-column
one, chosen because only whole rows are rotation-invariant). Every other parameter
(b_enc [S, d_sae], JumpReLU's log_threshold: latent space, which a rotation of the data leaves
alone) gets ordinary per-coordinate Adam in the same optimizer. Zero gradients (the idle latents'
rows of the sparse TopK path) decay m and v as Adam's do; a parameter whose .grad is None is
skipped, as in Adam.
"""

from __future__ import annotations

import math

import torch

from husai.sae import kernels

OPTIMIZERS = ("adam", "row_adam")

ACTIVATION_SPACE = ("W_enc_T", "W_dec", "b_dec")
"""StackedSAE parameters whose last axis is d_in (by name: with expansion 1, b_enc [S, d_sae] has
the same shape as b_dec)."""


class RowAdam(torch.optim.Optimizer):
    """Adam with one second moment per row (the last axis) for param groups with rows=True, ordinary
    per-coordinate Adam for groups with rows=False (the module docstring gives the update)."""

    def __init__(
        self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, rows=False))

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "RowAdam takes no closure"
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)  # m, the shape of p
                    # v: [..., 1] per row (broadcasts over d_in) or the shape of p
                    state["exp_avg_sq"] = (
                        p.new_zeros(*p.shape[:-1], 1) if group["rows"] else torch.zeros_like(p)
                    )
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)
                if group["rows"]:
                    # ||g||^2 / d_in from a norm: one pass, no [.., d_in] temporary
                    sq = (
                        torch.linalg.vector_norm(g, dim=-1, keepdim=True)
                        .square_()
                        .div_(g.shape[-1])
                    )
                    v.mul_(beta2).add_(sq, alpha=1 - beta2)
                else:
                    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(group["eps"])
                p.addcdiv_(m, denom, value=-group["lr"] / (1 - beta1**t))


class KernelAdam(torch.optim.Adam):
    """torch.optim.Adam (same update, same state: step, exp_avg, exp_avg_sq) stepping each parameter
    in one pass of kernels.c (adam_rows), without Adam.step's per-call Python work; the parameters
    in `constrained` (the unit-row decoder) get the decoder constraint in the same pass: the
    gradient's part along each row removed before the update, the rows renormalised after it
    (StackedSAE.remove_parallel_grads and normalize_decoder, which skip a decoder stepped here).
    One 5-seed TopK step: ~0.8 ms less than fused Adam plus the two constraint passes
    (BENCHMARKS.md)."""

    def __init__(self, params, lr: float, betas: tuple[float, float], constrained=()):
        super().__init__(params, lr=lr, betas=betas)
        self.constrained = {id(p) for p in constrained}

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "KernelAdam takes no closure"
        for group in self.param_groups:
            (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(
                        step=torch.tensor(0.0),
                        exp_avg=torch.zeros_like(p),
                        exp_avg_sq=torch.zeros_like(p),
                    )
                state["step"] += 1
                t = float(state["step"])
                kernels.adam_rows_(
                    p.data,
                    p.grad.contiguous(),
                    state["exp_avg"],
                    state["exp_avg_sq"],
                    lr / (1 - b1**t),
                    (b1, b2),
                    eps,
                    math.sqrt(1 - b2**t),
                    id(p) in self.constrained,
                )


def fused_adam(params: list, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused where the device supports it: one kernel per parameter instead of ~10 elementwise
    passes (measured 17.0 vs 19.8 ms per 5-seed step on 2 CPU cores), same update rule."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # a device (or an older torch) without the fused kernel
        return torch.optim.Adam(params, lr=lr, betas=betas)


def make_optimizer(
    sae: torch.nn.Module,
    name: str,
    lr: float,
    betas: tuple[float, float],
    constrain_decoder: bool = False,
) -> torch.optim.Optimizer:
    """name "adam" -> KernelAdam on the CPU with the compiled kernels (constrain_decoder: it also
    applies the unit-row decoder's constraint, and the SAE's own steps for it skip; the caller
    passes False when something must run between the update and the renormalisation), else
    fused_adam, over every parameter; "row_adam" -> RowAdam with rows=True for the ACTIVATION_SPACE
    parameters and per-coordinate Adam for the rest."""
    # until a KernelAdam below takes the constraint over
    sae.decoder_constraint_in_optimizer = False
    if name == "adam":
        params = list(sae.parameters())
        if kernels.usable(*params):
            constrained = [sae.W_dec] if constrain_decoder and sae.unit_norm_decoder else []
            sae.decoder_constraint_in_optimizer = bool(constrained)
            return KernelAdam(params, lr, betas, constrained)
        return fused_adam(params, lr, betas)
    if name != "row_adam":
        raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    named = list(sae.named_parameters())
    groups = [
        dict(params=[p for n, p in named if n in ACTIVATION_SPACE], rows=True),
        dict(params=[p for n, p in named if n not in ACTIVATION_SPACE], rows=False),
    ]
    return RowAdam([g for g in groups if g["params"]], lr, betas)
