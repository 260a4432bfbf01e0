"""Are an SAE's latents the model's Fourier features? (Nanda et al. 2023 ground truth.)

Activation view. A latent is a function z(a, b) over the p x p input grid (its activation at the `=`
position for input (a, b); row a*p + b). Its Fourier purity is the largest fraction of its centred
variance held by one frequency's 3x3 block {const, cos_k, sin_k}^2
(`husai.model.fourier.frequency_fractions`, the same rule Nanda et al. apply to MLP neurons), and
its frequency is that k. For the SAE:
    fourier_overlap = mean purity over live latents, in [0, 1]      (`compute_fourier_overlap`)
    frac_pure       = fraction of live latents with purity >= 0.85  (PURITY_THRESHOLD)
    coverage        = which key frequencies have >= 1 pure latent; pure latents on non-key
                      frequencies.
This replaces the public HUSAI "Fourier overlap", which compared 128-d decoder rows with 113-d
token-space Fourier vectors by truncation/padding: meaningless (docs/methods.md, "Fourier
validation").

Chance level (`chance_purity`). For an i.i.d. Gaussian function on the grid, the p^2 coefficients in
the orthonormal 2-D Fourier basis are again i.i.d. Gaussian. Centring drops (const, const), leaving
D = p^2 - 1; block k holds 8 of them, and the K = (p-1)/2 blocks are disjoint (8K = 4(p-1) dims; the
rest are cross terms cos_j (x) sin_k, j != k). So the block energies are Q_k ~ chi2_8, the rest
R ~ chi2_{D - 8K}, all independent, and purity = max_k Q_k / (sum_k Q_k + R) exactly. Each fraction
has mean 8/D (6.3e-4 at p = 113); the max over K = 56 blocks has mean ~1.57e-3 (std 2.7e-4).
We evaluate E[purity] by Monte Carlo in this chi-square representation (exact law, cheap).

Weight-space view (`frequency_subspaces`, `decoder_frequency_fractions`). The residual activations
x(a, b) in R^d have 2-D Fourier coefficients c_{fF} in R^d; the subspace carrying frequency k is the
span of the 8 coefficient vectors of block k (rank <= 8). A decoder row w puts a fraction
||P_k w||^2 / ||w||^2 of its norm in that subspace (null for a random w: dim_k / d).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from husai.model.fourier import PURITY_THRESHOLD, fourier_2d, frequency_fractions, get_fourier_basis  # noqa: F401

WEIGHT_ASSIGN = 0.5
"""Weight-space assignment: a latent belongs to key frequency k when more than half of its decoder
row's squared norm lies in k's activation subspace. Needed because sparse latents (TopK, small k)
fire on narrow bumps of phase, whose activation spectrum spreads over harmonics, so their
activation purity stays low even when their decoder row sits squarely in one frequency's
subspace."""

# latents per frequency_fractions call: bounds the [p, p, n] float64 buffer (~26 MB at p=113)
_CHUNK = 256


def latent_frequencies(
    latent_acts: torch.Tensor, p: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Purity and frequency of every latent.

    latent_acts: [p*p, n] (row a*p + b). Returns (purity [n] float64 in [0, 1], freq [n] int64 in
    1..(p-1)/2, 0 for a latent with no variance, live [n] bool: fires (!= 0) on at least one input).
    purity_i = max_k frac_{i,k}, freq_i = argmax_k + 1 with frac from `frequency_fractions`.
    """
    if latent_acts.ndim != 2 or latent_acts.shape[0] != p * p:
        raise ValueError(
            f"latent activations must be [p*p = {p * p}, n], got {list(latent_acts.shape)}"
        )
    fr = (
        torch.cat(
            [
                frequency_fractions(latent_acts[:, i : i + _CHUNK], p)
                for i in range(0, latent_acts.shape[1], _CHUNK)
            ]
        )
        if latent_acts.shape[1]
        else torch.zeros(0, (p - 1) // 2)
    )
    purity, idx = (
        fr.max(dim=1)
        if fr.shape[0]
        else (torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    )
    freq = torch.where(purity > 0, idx + 1, torch.zeros_like(idx))
    live = (latent_acts != 0).any(dim=0)
    return purity, freq, live


def compute_fourier_overlap(
    latent_acts: torch.Tensor, p: int, live: torch.Tensor | None = None
) -> float:
    """Mean Fourier purity over live latents: sum_{i live} max_k frac_{i,k} / n_live, in [0, 1].

    latent_acts: [p*p, d_sae] SAE latent activations over the whole grid (row a*p + b); live:
    optional [d_sae] bool mask (default: latents that fire on any input). 1 means every live latent
    is a single-frequency Fourier feature; random functions give `chance_purity(p)` (~0.0016 at
    p = 113).
    NaN when no latent is live.
    """
    purity, _, live_default = latent_frequencies(latent_acts, p)
    live = live_default if live is None else live.bool()
    return float(purity[live].mean()) if live.any() else float("nan")


@functools.lru_cache(maxsize=32)  # deterministic (fixed seed), and every report asks for it
def chance_purity(p: int, n_samples: int = 100_000, seed: int = 0) -> float:
    """E[purity] of an i.i.d. Gaussian function on the p x p grid (module docstring for the
    derivation).

    Monte Carlo over the exact law purity = max_k Q_k / (sum Q_k + R), Q_k ~ chi2_8 (K of them),
    R ~ chi2_{p^2 - 1 - 8K}. Standard error ~1e-6 at p = 113 with the default samples.
    """
    K, D = (p - 1) // 2, p * p - 1
    rng = np.random.default_rng(seed)
    Q = rng.chisquare(8, size=(n_samples, K))
    R = rng.chisquare(D - 8 * K, size=n_samples) if D > 8 * K else 0.0
    return float((Q.max(axis=1) / (Q.sum(axis=1) + R)).mean())


def frequency_subspaces(
    resid_acts: torch.Tensor, p: int, freqs: list[int], energy: float = 0.99
) -> dict[int, torch.Tensor]:
    """Orthonormal basis of the activation-space subspace carrying each frequency.

    resid_acts: [p*p, d] model activations at the SAE's hook (row a*p + b). For frequency k, the 8
    coefficient vectors c_{fF} in R^d of block {const, cos_k, sin_k}^2 \\ (const, const) span the
    part of x(a, b) built from frequency k alone. Returns {k: Q_k [d, r_k]}, r_k the fewest left
    singular directions holding >= `energy` of the block's energy (drops numerically negligible
    directions).
    """
    C = fourier_2d(resid_acts.detach().cpu(), p)  # [p, p, d]
    out = {}
    for k in freqs:
        idx = torch.tensor([0, 2 * k - 1, 2 * k])
        B = C[idx][:, idx].reshape(9, -1)[1:]  # [8, d]: drop (const, const), the mean
        U, s, Vh = torch.linalg.svd(B, full_matrices=False)
        if s.sum() <= 0:
            out[int(k)] = torch.zeros(B.shape[1], 0, dtype=torch.float64)
            continue
        cum = (s**2).cumsum(0) / (s**2).sum()
        r = int((cum < energy - 1e-12).sum()) + 1
        out[int(k)] = Vh[:r].T
    return out


def decoder_frequency_fractions(
    W_dec: torch.Tensor, subspaces: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fraction of each decoder row's squared norm inside each frequency subspace.

    W_dec: [n, d]; subspaces: {k: Q_k [d, r_k]}. Returns (fractions [n, len(subspaces)] with
    ||Q_k^T w||^2 / ||w||^2, in subspace order; union [n]: the same for the span of all Q_k
    together, which is <= the sum when the subspaces overlap). A random w scores r_k / d in
    expectation.
    """
    W = W_dec.detach().to("cpu", torch.float64)
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    Qs = list(subspaces.values())
    if not Qs:
        return torch.zeros(W.shape[0], 0, dtype=torch.float64), torch.zeros(
            W.shape[0], dtype=torch.float64
        )
    fr = torch.stack([(W @ Q).pow(2).sum(dim=1) for Q in Qs], dim=1)
    allQ = torch.cat(Qs, dim=1)
    if allQ.shape[1]:
        U, s, _ = torch.linalg.svd(allQ, full_matrices=False)
        U = U[:, s > 1e-8 * s.max()]  # orthonormal basis of the union
        union = (W @ U).pow(2).sum(dim=1)
    else:
        union = torch.zeros(W.shape[0], dtype=torch.float64)
    return fr, union


def fourier_report(
    latent_acts: torch.Tensor,
    p: int,
    key_freqs: list[int],
    W_dec: torch.Tensor | None = None,
    resid_acts: torch.Tensor | None = None,
    threshold: float = PURITY_THRESHOLD,
) -> dict:
    """Everything husai says about one SAE's Fourier structure, JSON-ready.

    latent_acts: [p*p, d_sae]; key_freqs: the model's key frequencies; W_dec [d_sae, d] and
    resid_acts [p*p, d] (activations at the SAE's hook) enable the weight-space view.
    Keys: n_latents, n_live, fourier_overlap, frac_pure, chance_purity, key_frequencies, covered,
    missing, coverage, pure_per_frequency {k: n}, non_key_pure {k: n} (pure latents per non-key
    frequency), latents {purity, frequency, live} (per latent), and weight_space {k: {dim,
    mean_frac_live, mean_frac_assigned, null}, union_mean}.
    """
    purity, freq, live = latent_frequencies(latent_acts, p)
    pure = live & (purity >= threshold)
    keys = sorted(int(k) for k in key_freqs)
    counts = {int(k): int(c) for k, c in zip(*np.unique(freq[pure].numpy(), return_counts=True))}
    covered = [k for k in keys if counts.get(k, 0) > 0]
    non_key = {k: c for k, c in counts.items() if k not in keys}
    n_live = int(live.sum())
    rep = {
        "n_latents": int(latent_acts.shape[1]),
        "n_live": n_live,
        "fourier_overlap": float(purity[live].mean()) if n_live else None,
        "frac_pure": float(pure.sum()) / n_live if n_live else None,
        "purity_threshold": threshold,
        "chance_purity": chance_purity(p),
        "key_frequencies": keys,
        "covered": covered,
        "missing": [k for k in keys if k not in covered],
        "coverage": len(covered) / len(keys) if keys else None,
        "pure_per_frequency": counts,
        "non_key_pure": dict(sorted(non_key.items())),
        "latents": {"purity": purity.tolist(), "frequency": freq.tolist(), "live": live.tolist()},
    }
    if W_dec is not None and resid_acts is not None and keys:
        subs = frequency_subspaces(resid_acts, p, keys)
        fr, union = decoder_frequency_fractions(W_dec, subs)
        d = W_dec.shape[1]
        wmax, widx = fr.max(dim=1)
        wfreq = torch.where(wmax > WEIGHT_ASSIGN, torch.tensor(keys)[widx], torch.zeros_like(widx))
        ws = {}
        for j, k in enumerate(keys):
            assigned = pure & (freq == k)
            ws[k] = {
                "dim": int(subs[k].shape[1]),
                "null": subs[k].shape[1] / d,
                "mean_frac_live": float(fr[live, j].mean()) if n_live else None,
                "mean_frac_assigned": float(fr[assigned, j].mean()) if assigned.any() else None,
                "n_weight_assigned": int((live & (wfreq == k)).sum()),
            }
        rep["weight_space"] = {
            "per_frequency": ws,
            "union_mean_live": float(union[live].mean()) if n_live else None,
            "union_dim": int(torch.linalg.matrix_rank(torch.cat(list(subs.values()), 1))),
            "weight_purity_mean_live": float(wmax[live].mean()) if n_live else None,
            "frac_weight_assigned": float((live & (wfreq > 0)).sum()) / n_live if n_live else None,
            "covered_by_weights": [k for k in keys if ws[k]["n_weight_assigned"] > 0],
        }
        rep["latents"]["weight_frequency"] = wfreq.tolist()
        rep["latents"]["weight_purity"] = wmax.tolist()
    return rep
