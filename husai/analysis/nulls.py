"""Null baselines: what would chance give for each stability number?

Public work reported a seed "stability" of 0.30 for (d_in 128, d_sae 1024) SAEs, which is exactly
the value for two sets of random unit vectors (science brief, section 5). So every husai stability
number is reported as {value, null_mean, null_std, z, exceeds_null_max}, against three nulls with the
same d_in and d_sae:

  isotropic      atoms uniform on the unit sphere S^{d_in - 1} (normalised N(0, I) draws);
  activation     atoms drawn from N(0, Sigma), Sigma the covariance of the real activations, then
                 normalised: random directions INSIDE the activations' own (often low-rank) subspace.
                 For a grokked model the residual lives near a few Fourier planes, so random
                 directions there already agree far more than isotropic ones: the fair null;
  untrained      the SAE architecture's initialisation under fresh seeds (default: Gao et al. 2024's
                 tied init, W_dec rows unit-norm Gaussian, W_enc = W_dec^T; pass `init_fn` to use
                 another architecture's init).

Each null draws `n_pairs` independent pairs of dictionaries; encoders are the tied transposes, which
is what an untrained SAE has and is harmless for the others.
"""

from __future__ import annotations

import itertools
from typing import Callable

import numpy as np
import torch

from husai.analysis.stability import SHARED_THRESHOLD, pair_metrics

InitFn = Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]
"""init_fn(d_in, d_sae, seed) -> (W_enc [d_in, d_sae], W_dec [d_sae, d_in])."""


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def isotropic_dictionary(n: int, d: int, seed: int) -> torch.Tensor:
    """n atoms uniform on S^{d-1}: normalised rows of N(0, I_d). -> [n, d] float64."""
    A = torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)
    return A / A.norm(dim=1, keepdim=True)


def covariance_factor(acts: torch.Tensor) -> torch.Tensor:
    """L [d, d] with L L^T = Cov(acts); acts: [N, d]. Symmetric square root via eigh (handles rank < d)."""
    X = acts.detach().to("cpu", torch.float64)
    X = X - X.mean(dim=0)
    S = X.T @ X / max(X.shape[0] - 1, 1)
    evals, evecs = torch.linalg.eigh(S)
    return evecs * evals.clamp_min(0).sqrt()


def activation_dictionary(n: int, L: torch.Tensor, seed: int) -> torch.Tensor:
    """n random unit atoms with matched covariance: normalise(g L^T), g ~ N(0, I). L: [d, d] -> [n, d].

    Each atom lies in the column space of Cov(acts), with directions of large activation variance
    proportionally more likely, as they would be for an SAE that merely tracked the data's spread.
    """
    g = torch.randn(n, L.shape[1], generator=_gen(seed), dtype=torch.float64)
    A = g @ L.T
    return A / A.norm(dim=1, keepdim=True).clamp_min(1e-12)


def principal_subspace(L: torch.Tensor, energy: float = 0.99) -> torch.Tensor:
    """Orthonormal basis [d, r] of the fewest principal directions holding >= `energy` of the variance.

    L: the `covariance_factor` (columns = eigenvectors * sqrt(eigenvalues), ascending order)."""
    var = L.pow(2).sum(dim=0)  # eigenvalues
    order = var.argsort(descending=True)
    cum = var[order].cumsum(0) / var.sum().clamp_min(1e-300)
    r = int((cum < energy - 1e-12).sum()) + 1
    Q = L[:, order[:r]]
    return Q / Q.norm(dim=0, keepdim=True).clamp_min(1e-300)


def subspace_dictionary(n: int, Q: torch.Tensor, seed: int) -> torch.Tensor:
    """n atoms uniform on the unit sphere of span(Q), Q [d, r] orthonormal: normalise(g Q^T). -> [n, d]."""
    A = torch.randn(n, Q.shape[1], generator=_gen(seed), dtype=torch.float64) @ Q.T
    return A / A.norm(dim=1, keepdim=True).clamp_min(1e-12)


def tied_init(d_in: int, d_sae: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gao et al. 2024 init: W_dec rows unit-norm random, W_enc = W_dec^T. -> (W_enc [d_in, d_sae], W_dec [d_sae, d_in])."""
    W_dec = isotropic_dictionary(d_sae, d_in, seed)
    return W_dec.T.clone(), W_dec


def null_stats(value: float | None, samples) -> dict:
    """value next to its null distribution. samples: 1-D array-like of null draws.

    z = (value - mean) / std (std with ddof=1). A null with zero spread (e.g. a shared fraction that is
    0 in every draw) gives z = None; `exceeds_null_max` still says whether value beats every draw.
    """
    s = np.asarray([x for x in samples if x is not None], dtype=np.float64)
    mean = float(s.mean()) if s.size else None
    std = float(s.std(ddof=1)) if s.size > 1 else None
    z = None
    if value is not None and mean is not None and std is not None and std > 1e-12:
        z = (value - mean) / std
    return {"value": value, "null_mean": mean, "null_std": std, "z": z,
            "exceeds_null_max": None if value is None or not s.size else bool(value > s.max()), "n_null": int(s.size)}


def null_samples(d_in: int, d_sae: int, n_pairs: int = 10, acts: torch.Tensor | None = None,
                 init_fn: InitFn | None = None, kinds: tuple[str, ...] = ("isotropic", "activation", "subspace", "untrained"),
                 threshold: float = SHARED_THRESHOLD, seed: int = 0, init_seeds: list[int] | None = None) -> dict:
    """Draw `n_pairs` dictionary pairs per null kind and compute every `pair_metrics` metric on each.

    acts: [N, d_in] real activations, needed for the "activation" and "subspace" nulls (skipped without).
    init_seeds: the compared SAEs' own seeds; the "untrained" null then starts with the pairs of their
    actual initialisations (what the comparison would give with no training), topped up with fresh seeds
    to n_pairs.
    Returns {kind: {metric: [n_pairs floats]}}. Seeds are seed + 1000 * kind index + 2 * pair (+1),
    so nulls are reproducible and never reuse an SAE's own training seed range.
    Cost: n_pairs Hungarian problems of size d_sae per kind (tied encoders reuse the decoder matching;
    an untrained SAE whose init_fn unties them costs two).
    """
    L = covariance_factor(acts) if acts is not None else None
    init = init_fn or tied_init
    out: dict[str, dict[str, list]] = {}
    own = list(itertools.combinations(init_seeds, 2))[:n_pairs] if init_seeds and len(init_seeds) > 1 else None
    for ki, kind in enumerate(kinds):
        if kind in ("activation", "subspace") and L is None:
            continue
        res: dict[str, list] = {}
        for t in range(n_pairs):
            s1, s2 = seed + 1000 * ki + 2 * t, seed + 1000 * ki + 2 * t + 1
            if kind == "untrained" and own and t < len(own):  # the SAEs' own inits first, then fresh seeds
                s1, s2 = own[t]
            if kind == "isotropic":
                D1, D2 = isotropic_dictionary(d_sae, d_in, s1), isotropic_dictionary(d_sae, d_in, s2)
                E1, E2 = D1, D2
            elif kind == "activation":
                D1, D2 = activation_dictionary(d_sae, L, s1), activation_dictionary(d_sae, L, s2)
                E1, E2 = D1, D2
            elif kind == "subspace":
                Q = principal_subspace(L)
                D1, D2 = subspace_dictionary(d_sae, Q, s1), subspace_dictionary(d_sae, Q, s2)
                E1, E2 = D1, D2
            elif kind == "untrained":
                (We1, D1), (We2, D2) = init(d_in, d_sae, s1), init(d_in, d_sae, s2)
                # tied init (W_enc = W_dec^T): reuse the decoder so pair_metrics skips a Hungarian
                E1 = D1 if torch.equal(We1.T, D1) else We1.T
                E2 = D2 if torch.equal(We2.T, D2) else We2.T
            else:
                raise ValueError(f"unknown null kind {kind!r}")
            m = pair_metrics(D1, D2, E1, E2, threshold)
            for k, v in m.items():
                res.setdefault(k, []).append(v)
        out[kind] = res
    return out


def with_nulls(values: dict, nulls: dict) -> dict:
    """Attach nulls to observed values. values: {metric: float}; nulls: output of `null_samples`.

    Returns {metric: {"value": v, "nulls": {kind: null_stats}}}.
    """
    return {k: {"value": v, "nulls": {kind: null_stats(v, d.get(k, [])) for kind, d in nulls.items()}}
            for k, v in values.items()}


def untrained_latent_acts(x: torch.Tensor, W_dec_init: torch.Tensor, b_dec: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """Latent activations of an SAE at its tied initialisation: the Fourier-purity null.

    x: [N, d_in]; W_dec_init: [d_sae, d_in] (W_enc = W_dec^T, b_enc = 0 at init); b_dec: [d_in]
    (the trained SAE's, ~ the geometric median it was initialised to); k: TopK's k, else ReLU.
    pre = (x - b_dec) W_dec_init^T [N, d_sae]; z = ReLU(TopK_k(pre)) or ReLU(pre). Because the
    residual itself is Fourier-structured, such random latents are already partly pure; a trained
    SAE's fourier_overlap must be compared with this, not with 0.
    """
    pre = (x.to(torch.float64) - b_dec.to(torch.float64)) @ W_dec_init.to(torch.float64).T
    if k is None:
        return torch.relu(pre)
    vals, idx = pre.topk(k, dim=1)
    return torch.zeros_like(pre).scatter(1, idx, torch.relu(vals))

