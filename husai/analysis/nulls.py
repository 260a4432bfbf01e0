"""Null baselines: what would chance, or no learning, give for a number?

Public work reported a seed "stability" of 0.30 for (d_in 128, d_sae 1024) SAEs, which is exactly
the value for two sets of random unit vectors (docs/methods.md, "Nulls"). husai reads every
stability figure against nulls that fit the data's geometry (husai.analysis.agreement draws them
per seed pair, in the data span's coordinates):

  isotropic         atoms uniform on the unit sphere (of the span): the naive null;
  matched_geometry  Gaussian atoms with a dictionary's own second moment: what a dictionary that
                    merely spreads like this one shares by chance. It replaces the covariance-drawn
                    null of husai < 0.3, whose atoms concentrate in the data's ~8 effective
                    dimensions against a trained dictionary's 15-28, so it matched better than any
                    real dictionary (docs/methods.md, "Nulls");
  symmetry          one seed's SAE moved by the task's shift (husai.analysis.data_span.shift_map).

For the Fourier purity of latents the null is an untrained SAE (`untrained_latent_acts`), with
`null_stats` comparing a value with a few such draws.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from husai.analysis.stability import unit

InitFn = Callable[[int, int, int], tuple[torch.Tensor, torch.Tensor]]
"""init_fn(d_in, d_sae, seed) -> (W_enc [d_in, d_sae], W_dec [d_sae, d_in])."""


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def isotropic_dictionary(n: int, d: int, seed: int | torch.Generator) -> torch.Tensor:
    """n atoms uniform on S^{d-1}: normalised rows of N(0, I_d). -> [n, d] float64."""
    g = seed if isinstance(seed, torch.Generator) else _gen(seed)
    return unit(torch.randn(n, d, generator=g, dtype=torch.float64))


def matched_geometry_dictionary(D: torch.Tensor, seed: int | torch.Generator) -> torch.Tensor:
    """len(D) random unit atoms whose second moment is that of the dictionary's unit rows D [n, r]:
    random atoms that spread over the space as D does. -> [n, r] float64.

    The atoms are normalised Gaussians unit(g), g ~ N(0, V diag(lam) V^T), with V the eigenvectors
    of C = unit(D)^T unit(D) / n. Normalising pulls the second moment towards isotropy (eigenvalues
    0.10/0.31/0.60 came out 0.04/0.23/0.73 with lam = eig(C), measured), so lam is corrected by a
    few fixed-point steps on a fixed probe sample until E[unit(g) unit(g)^T] has C's eigenvalues."""
    g = seed if isinstance(seed, torch.Generator) else _gen(seed)
    U = unit(D.double())
    C = U.T @ U / max(len(U), 1)
    w, V = torch.linalg.eigh(C)
    w = torch.where(
        w > 1e-12 * w.max(), w, torch.zeros_like(w)
    )  # rounding noise is not a direction of D
    probe = torch.randn(8192, len(w), generator=_gen(0), dtype=torch.float64)
    lam = w.clone()
    for _ in range(10):
        mu = unit(probe * lam.sqrt()).pow(2).mean(0)
        lam = torch.where(w > 0, lam * w / mu.clamp_min(1e-30), torch.zeros_like(w))
        lam = lam / lam.sum()
    return unit(torch.randn(len(U), len(w), generator=g, dtype=torch.float64) * lam.sqrt()) @ V.T


def tied_init(d_in: int, d_sae: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gao et al. 2024 init: W_dec rows unit-norm random, W_enc = W_dec^T.
    -> (W_enc [d_in, d_sae], W_dec [d_sae, d_in])."""
    W_dec = isotropic_dictionary(d_sae, d_in, seed)
    return W_dec.T.clone(), W_dec


def null_stats(value: float | None, samples) -> dict:
    """value next to its null distribution. samples: 1-D array-like of null draws.

    z = (value - mean) / std (std with ddof=1). A null with zero spread (e.g. a shared fraction that
    is 0 in every draw) gives z = None; `exceeds_null_max` still says whether value beats every
    draw.
    """
    s = np.asarray([x for x in samples if x is not None], dtype=np.float64)
    mean = float(s.mean()) if s.size else None
    std = float(s.std(ddof=1)) if s.size > 1 else None
    z = None
    if value is not None and mean is not None and std is not None and std > 1e-12:
        z = (value - mean) / std
    return {
        "value": value,
        "null_mean": mean,
        "null_std": std,
        "z": z,
        "exceeds_null_max": None if value is None or not s.size else bool(value > s.max()),
        "n_null": int(s.size),
    }


def untrained_latent_acts(
    x: torch.Tensor, W_dec_init: torch.Tensor, b_dec: torch.Tensor, k: int | None = None
) -> torch.Tensor:
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
