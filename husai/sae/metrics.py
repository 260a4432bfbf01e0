"""SAE metrics over all p^2 inputs, as metrics.json reports them (README, "The SAE stage").

Every function takes a stacked SAE (S seeds) and returns one value per seed (a list of floats).

    mse                 mean over inputs and dimensions of (x - x_hat)^2
    explained_variance  1 - sum_n ||x_n - x_hat_n||^2 / sum_n ||x_n - mean(x)||^2   (centred)
    l0                  mean number of active latents per input
    frac_dead           fraction of latents that never fire on any input
    frac_dense          fraction of latents that fire on > 10% of inputs
    spliced_*           the model run with the hooked activation at `=` replaced by x_hat:
      spliced_acc, spliced_ce (mean cross-entropy), delta_ce = spliced_ce - clean_ce,
      ce_loss_recovered_{zero,mean} = (CE_ablate - CE_sae) / (CE_ablate - CE_clean), the
      activation at `=` ablated to zero / to its mean over all inputs
    cosine_to_init      mean over latents of cos(W_dec,i, W_dec,i at init): 1 = never moved
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from husai.sae.activations import splice_at_eq

DENSE_FRACTION = 0.1


@torch.no_grad()
def reconstruct(sae, x: torch.Tensor, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, d_in] -> (x_hat [S, N, d_in], fire counts [S, d_sae], active-latent sums [S])."""
    outs, counts, l0 = [], 0, 0
    for i in range(0, x.shape[0], batch_size):
        z = sae.encode(x[i : i + batch_size])
        outs.append(sae.decode(z))
        active = z > 0
        counts = counts + active.sum(1)
        l0 = l0 + active.sum((1, 2))
    return torch.cat(outs, 1), counts, l0


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """x [N, d], x_hat [..., N, d] -> EV [...] (centred: 1 - FVU); NaN when x has no variance
    (0/0 is undefined, never a perfect score)."""
    x, x_hat = x.double(), x_hat.double()
    resid = (x - x_hat).pow(2).sum((-1, -2))
    total = (x - x.mean(0)).pow(2).sum()
    return 1 - resid / total if total > 0 else torch.full_like(resid, float("nan"))


def reconstruction_metrics(sae, x: torch.Tensor) -> dict[str, list[float]]:
    """Per-seed mse, explained_variance, l0, frac_dead, frac_dense over the rows of x [N, d_in]."""
    x_hat, counts, l0 = reconstruct(sae, x)
    N = x.shape[0]
    return dict(
        mse=(x_hat.double() - x.double()).pow(2).mean((1, 2)).tolist(),
        explained_variance=[
            None if math.isnan(v) else v for v in explained_variance(x, x_hat).tolist()
        ],
        l0=(l0.double() / N).tolist(),
        frac_dead=(counts == 0).double().mean(1).tolist(),
        frac_dense=(counts > DENSE_FRACTION * N).double().mean(1).tolist(),
    )


def cosine_to_init(W_dec: torch.Tensor, W_dec_init: torch.Tensor) -> list[float]:
    """W_dec, W_dec_init [S, d_sae, d_in] -> mean cosine of each row to its initial value [S]."""
    return F.cosine_similarity(W_dec.double(), W_dec_init.double(), dim=-1).mean(-1).tolist()


@torch.no_grad()
def _ce_acc(
    model, tokens, labels, hook_name=None, new=None, batch_size: int = 4096
) -> tuple[float, float]:
    """Mean cross-entropy (float64) and accuracy of the model, optionally with the activation at
    `=` of hook_name replaced by new [N, d]."""
    ce, correct = 0.0, 0
    for i in range(0, tokens.shape[0], batch_size):
        t = tokens[i : i + batch_size]
        if hook_name is None:
            logits = model(t)
        else:
            logits = model.run_with_hooks(
                t, [(hook_name, splice_at_eq(hook_name, new[i : i + batch_size]))]
            )
        y = labels[i : i + batch_size]
        ce += F.cross_entropy(logits.double(), y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
    return ce / tokens.shape[0], correct / tokens.shape[0]


def spliced_metrics(
    sae, model, hook_name: str, tokens: torch.Tensor, labels: torch.Tensor, x: torch.Tensor
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """x [N, d] = the activations of hook_name at `=` for tokens [N, 3] (labels [N]).

    Returns (per-seed spliced_acc, spliced_ce, delta_ce, ce_loss_recovered_zero/_mean, and the
    shared baselines clean_ce, clean_acc, zero_ablation_ce, mean_ablation_ce)."""
    clean_ce, clean_acc = _ce_acc(model, tokens, labels)
    zero_ce, _ = _ce_acc(model, tokens, labels, hook_name, torch.zeros_like(x))
    mean_ce, _ = _ce_acc(model, tokens, labels, hook_name, x.mean(0, keepdim=True).expand_as(x))
    x_hat, _, _ = reconstruct(sae, x)
    out = {
        k: []
        for k in (
            "spliced_acc",
            "spliced_ce",
            "delta_ce",
            "ce_loss_recovered_zero",
            "ce_loss_recovered_mean",
        )
    }
    for s in range(x_hat.shape[0]):
        ce, acc = _ce_acc(model, tokens, labels, hook_name, x_hat[s])
        out["spliced_acc"].append(acc)
        out["spliced_ce"].append(ce)
        out["delta_ce"].append(ce - clean_ce)
        out["ce_loss_recovered_zero"].append(_recovered(zero_ce, ce, clean_ce))
        out["ce_loss_recovered_mean"].append(_recovered(mean_ce, ce, clean_ce))
    base = dict(
        clean_ce=clean_ce, clean_acc=clean_acc, zero_ablation_ce=zero_ce, mean_ablation_ce=mean_ce
    )
    return out, base


def _recovered(ablate: float, sae: float, clean: float) -> float | None:
    """(CE_ablate - CE_sae) / (CE_ablate - CE_clean); missing (None) when ablation does not hurt at
    all, so that there is nothing to recover (0/0 is not a score)."""
    denom = ablate - clean
    return (ablate - sae) / denom if abs(denom) > 1e-12 else None
