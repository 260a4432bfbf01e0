"""Do SAEs trained with different seeds learn the same latents? Atom-, frequency- and
subspace-level.

Conventions. A dictionary is a tensor A [n, d] whose rows are atoms: decoder rows
W_dec [d_sae, d_in], or encoder columns W_enc.T [d_sae, d_in]. Every metric first unit-normalises
the rows, so it is invariant to per-atom scaling (an SAE can trade a latent's scale between encoder
and decoder).

Metrics, for two dictionaries with cosine matrix C = unit(A) unit(B)^T [n, m]:
  * PW-MCC (Song et al. 2025, "Position: Mechanistic Interpretability Should Prioritize Feature
    Consistency in SAEs"): one-to-one Hungarian assignment pi minimising sum(1 - C[i, pi(i)])
    (scipy.optimize.linear_sum_assignment), MCC = mean_i C[i, pi(i)] over the min(n, m) matched
    pairs.
    SIGN: the cosine is SIGNED, as in Song et al. An SAE latent's activation is >= 0, so atoms
    w and -w are different features (one fires where the other cannot); a sign-flipped atom counts
    as cos = -1 and the assignment avoids it. Hence a fully sign-flipped copy of a dictionary does
    NOT score 1: it scores the best assignment of -C, e.g. exactly 0 for an orthonormal dictionary
    with n >= 2 (any derangement). `signed=False` matches on |C| instead (sign-agnostic variant).
  * mean-max |cos| (symmetrised, no assignment): (mean_i max_j |C_ij| + mean_j max_i |C_ij|) / 2.
    This is the number the public HUSAI repository calls "PWMCC"; it is NOT Song et al.'s PW-MCC
    (no one-to-one constraint, sign ignored), and for dictionaries of equal size it is always >= the
    matched signed value (with unequal sizes the unmatched atoms pull it down: it can be lower).
  * shared fraction (Paulo & Belrose 2025, "Sparse Autoencoders Trained on the Same Data Learn
    Different Features"): after a Hungarian matching, the fraction of the matched pairs whose
    encoder cosine AND decoder cosine both exceed a threshold (0.7, recalled from the paper).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

SHARED_THRESHOLD = 0.7


def _as_tensor(x) -> torch.Tensor:
    """Decoder rows of an SAE-like object (attribute W_dec [d_sae, d_in]) or a plain [n, d]
    tensor."""
    if hasattr(x, "W_dec"):
        x = x.W_dec
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.ndim != 2:
        raise ValueError(
            f"a dictionary must be a 2-D [n_atoms, d] tensor, got shape {list(t.shape)}"
        )
    return t


def unit(A: torch.Tensor) -> torch.Tensor:
    """Rows of a tensor scaled to unit L2 norm, in its dtype: [n, d] -> [n, d]; all-zero rows stay
    zero."""
    return A / A.norm(dim=1, keepdim=True).clamp_min(1e-30)


def unit_rows(A) -> torch.Tensor:
    """Rows scaled to unit L2 norm. A: [n, d] (any array) -> [n, d] float64; all-zero rows stay zero
    (cos 0 with all)."""
    return unit(_as_tensor(A))


def cosine_matrix(A, B) -> torch.Tensor:
    """C[i, j] = cos(A_i, B_j). A: [n, d], B: [m, d] -> [n, m] float64."""
    A, B = unit_rows(A), unit_rows(B)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"dictionaries live in different spaces: d = {A.shape[1]} vs {B.shape[1]}")
    return A @ B.T


def hungarian(C: torch.Tensor, signed: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one assignment maximising the summed (signed, or absolute) cosine.

    C: [n, m] cosines. Returns (rows [r], cols [r], matched cosines C[rows, cols] [r]) with
    r = min(n, m).
    Maximising sum C is the same as minimising sum (1 - C), Song et al.'s cost.
    The matched values returned are the signed cosines even when signed=False chose the pairs on
    |C|.
    """
    M = C.numpy() if isinstance(C, torch.Tensor) else np.asarray(C)
    rows, cols = linear_sum_assignment(M if signed else np.abs(M), maximize=True)
    return rows, cols, M[rows, cols]


def pw_mcc_from_cos(C: torch.Tensor, signed: bool = True) -> float:
    """Mean matched cosine (MCC) of a cosine matrix C [n, m]; |matched cos| when signed=False."""
    _, _, v = hungarian(C, signed)
    return float(np.abs(v).mean() if not signed else v.mean())


def mean_max_abs_cos_from_cos(C: torch.Tensor) -> float:
    """(mean_i max_j |C_ij| + mean_j max_i |C_ij|) / 2 for C [n, m]: the public HUSAI code's
    "PWMCC"."""
    # max |c| = max(max c, -min c): four reductions, no |C| copy (2048^2 doubles are 32 MB)
    rows = torch.maximum(C.amax(dim=1), -C.amin(dim=1))
    cols = torch.maximum(C.amax(dim=0), -C.amin(dim=0))
    return float((rows.mean() + cols.mean()) / 2)


def pw_mcc(A, B, signed: bool = True) -> float:
    """Song et al.'s MCC between two dictionaries A [n, d], B [m, d] (Hungarian on signed
    cosine)."""
    return pw_mcc_from_cos(cosine_matrix(A, B), signed)


def mean_max_abs_cos(A, B) -> float:
    """Symmetrised mean-max |cos| between A [n, d] and B [m, d] (what public HUSAI calls PWMCC)."""
    return mean_max_abs_cos_from_cos(cosine_matrix(A, B))


def compute_pwmcc(sae1, sae2, signed: bool = True) -> float:
    """PW-MCC (Song et al. 2025) of two SAEs' decoders: Hungarian-matched mean signed cosine.

    sae1, sae2: objects with W_dec [d_sae, d_in] (husai.sae.checkpoint SAEs) or plain [d_sae, d_in]
    tensors.
    Returns a float in [-1, 1]; 1 iff the decoders are equal up to a permutation and positive
    scaling.
    (For the symmetrised mean-max |cos| that public HUSAI calls PWMCC, use `mean_max_abs_cos`.)
    """
    return pw_mcc(sae1, sae2, signed)


def pair_metrics(
    dec1, dec2, enc1=None, enc2=None, threshold: float = SHARED_THRESHOLD, match_on: str = "encoder"
) -> dict:
    """All atom-level metrics for one pair of SAEs.

    dec*: decoder rows [d_sae, d_in]; enc*: encoder atoms as rows [d_sae, d_in] (i.e. W_enc.T),
    optional.
    Shared fraction: pairs matched by Hungarian on the `match_on` cosine ("encoder", as we recall
    Paulo & Belrose doing, or "decoder"); a pair is shared when its encoder AND decoder cosines both
    exceed `threshold`. Fraction of min(d_sae1, d_sae2) matched pairs.
    Returns {"pw_mcc_dec", "mean_max_abs_cos_dec", and if encoders given "pw_mcc_enc",
    "mean_max_abs_cos_enc", "shared_fraction"}. Cost: one Hungarian per dictionary type.
    """
    Cd = cosine_matrix(dec1, dec2)
    r_d, c_d, v_d = hungarian(Cd)
    out = {"pw_mcc_dec": float(v_d.mean()), "mean_max_abs_cos_dec": mean_max_abs_cos_from_cos(Cd)}
    if enc1 is None or enc2 is None:
        return out
    if enc1 is dec1 and enc2 is dec2:  # tied weights (an untrained SAE): skip the second Hungarian
        Ce, r_e, c_e, v_e = Cd, r_d, c_d, v_d
    else:
        Ce = cosine_matrix(enc1, enc2)
        r_e, c_e, v_e = hungarian(Ce)
    out["pw_mcc_enc"] = float(v_e.mean())
    out["mean_max_abs_cos_enc"] = mean_max_abs_cos_from_cos(Ce)
    rows, cols = (r_e, c_e) if match_on == "encoder" else (r_d, c_d)
    both = (Ce.numpy()[rows, cols] > threshold) & (Cd.numpy()[rows, cols] > threshold)
    out["shared_fraction"] = float(both.mean())
    return out


def _summary(M: np.ndarray) -> dict:
    """Mean and std (ddof=1 when >= 2 pairs) of the strict upper triangle of a symmetric [N, N]
    matrix."""
    iu = np.triu_indices(M.shape[0], k=1)
    v = M[iu]
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n_pairs": int(v.size),
    }


def pairwise_matrices(
    decoders: list,
    encoders: list | None = None,
    threshold: float = SHARED_THRESHOLD,
    match_on: str = "encoder",
) -> dict:
    """Pairwise stability over N seeds.

    decoders: N dictionaries [d_sae, d_in]; encoders: N encoder dictionaries (rows = W_enc.T) or
    None.
    Returns {metric: {"matrix": [N, N] list (diagonal = self-comparison = 1), "mean", "std", "min",
    "max", "n_pairs"}} for every key of `pair_metrics`. mean/std are over the N(N-1)/2 distinct
    pairs.
    """
    N = len(decoders)
    if N < 2:
        raise ValueError("stability needs at least two dictionaries")
    decoders = [unit_rows(D) for D in decoders]  # normalise once, not once per pair
    encoders = [unit_rows(E) for E in encoders] if encoders else None
    mats: dict[str, np.ndarray] = {}
    for i, j in itertools.combinations(range(N), 2):
        m = pair_metrics(
            decoders[i],
            decoders[j],
            encoders[i] if encoders else None,
            encoders[j] if encoders else None,
            threshold,
            match_on,
        )
        for k, v in m.items():
            mats.setdefault(k, np.eye(N))[i, j] = v
            mats[k][j, i] = v
    return {k: {"matrix": M.tolist(), **_summary(M)} for k, M in mats.items()}


def jaccard(s1: set, s2: set) -> float:
    """|s1 & s2| / |s1 | s2|; NaN for two empty sets (no frequencies recovered is not agreement)."""
    return len(s1 & s2) / len(s1 | s2) if (s1 or s2) else float("nan")


def frequency_set_stability(freq_sets: list[set[int]]) -> dict:
    """Do the seeds recover the same frequencies? freq_sets: per seed, the frequencies with >= 1
    pure latent.

    Returns {"jaccard": [N, N] pairwise |A & B| / |A | B|, "jaccard_mean", "in_all": sorted
    frequencies every seed has, "in_any": sorted union}.
    """
    N = len(freq_sets)
    J = np.array([[jaccard(freq_sets[i], freq_sets[j]) for j in range(N)] for i in range(N)])
    off = J[np.triu_indices(N, k=1)]
    off = off[np.isfinite(off)]
    return {
        "jaccard": J.tolist(),
        "jaccard_mean": float(off.mean()) if off.size else None,
        "in_all": sorted(set.intersection(*map(set, freq_sets))) if freq_sets else [],
        "in_any": sorted(set.union(*map(set, freq_sets))) if freq_sets else [],
    }


def span_basis(A, rel: float = 0.05) -> torch.Tensor:
    """Orthonormal basis [d, r] of the span of the unit-normalised rows of A [m, d].

    Keeps the right singular vectors with s_i^2 >= rel * s_1^2, so a few noisy atoms do not inflate
    the dimension. A relative cut (not a cumulative-energy one) keeps tied singular values together:
    m orthonormal atoms give all of their m directions in every seed, whatever the row order.
    m = 0 gives [d, 0].
    """
    U = unit_rows(A)
    if U.shape[0] == 0:
        return torch.zeros(U.shape[1], 0, dtype=torch.float64)
    _, s, Vh = torch.linalg.svd(U, full_matrices=False)
    r = int((s**2 >= rel * s[0] ** 2 * (1 - 1e-9)).sum())
    return Vh[:r].T


def principal_cosines(Q1: torch.Tensor, Q2: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(Q1) and span(Q2) (Bjorck & Golub 1973).

    Q1: [d, r1], Q2: [d, r2] orthonormal columns -> [min(r1, r2)] descending, = svdvals(Q1^T Q2).
    """
    if Q1.shape[1] == 0 or Q2.shape[1] == 0:
        return torch.zeros(0, dtype=torch.float64)
    return torch.linalg.svdvals(Q1.T @ Q2).clamp(0, 1)


def subspace_overlap(Q1: torch.Tensor, Q2: torch.Tensor) -> float:
    """sum_i cos^2(theta_i) / max(r1, r2) in [0, 1]: 1 iff the two spans coincide.

    Isotropic-random-subspace expectation: E||Q1^T Q2||_F^2 = r1 r2 / d, so the null is
    min(r1, r2) / d.
    """
    r = max(Q1.shape[1], Q2.shape[1])
    return float(principal_cosines(Q1, Q2).pow(2).sum() / r) if r else float("nan")


def subspace_stability(
    decoders: list, latent_freqs: list, freqs: list[int], rel: float = 0.05
) -> dict:
    """Per frequency: are the latents assigned to it spanning the same subspace in every seed?

    decoders: N tensors [d_sae, d_in]; latent_freqs: N int tensors [d_sae] (frequency of each
    latent, 0 = unassigned); freqs: the frequencies to check (the model's key frequencies).
    For each k and seed pair: span S_k of the decoder rows of the latents with frequency k
    (`span_basis`), principal-angle cosines between the two spans, `subspace_overlap`, and the
    atom-level PW-MCC restricted to those latents. Phase rotation inside a stable plane shows as
    overlap ~1 with a low atom PW-MCC; real instability lowers both.
    Returns {k: {"dims": [N], "overlap_mean", "atom_pw_mcc_mean", "null_overlap_mean",
    "pairs": [...]}}.
    """
    d = _as_tensor(decoders[0]).shape[1]
    out = {}
    for k in freqs:
        atoms = [_as_tensor(D)[torch.as_tensor(f) == k] for D, f in zip(decoders, latent_freqs)]
        Qs = [span_basis(a, rel) for a in atoms]
        pairs = []
        for i, j in itertools.combinations(range(len(Qs)), 2):
            if atoms[i].shape[0] == 0 or atoms[j].shape[0] == 0:
                pairs.append(
                    {
                        "seeds": [i, j],
                        "overlap": None,
                        "cosines": [],
                        "atom_pw_mcc": None,
                        "null_overlap": None,
                    }
                )
                continue
            pairs.append(
                {
                    "seeds": [i, j],
                    "overlap": subspace_overlap(Qs[i], Qs[j]),
                    "cosines": principal_cosines(Qs[i], Qs[j]).tolist(),
                    "atom_pw_mcc": pw_mcc(atoms[i], atoms[j]),
                    "null_overlap": min(Qs[i].shape[1], Qs[j].shape[1]) / d,
                }
            )
        ok = [q for q in pairs if q["overlap"] is not None]
        mean = lambda key: float(np.mean([q[key] for q in ok])) if ok else None  # noqa: E731
        out[int(k)] = {
            "n_latents": [int(a.shape[0]) for a in atoms],
            "dims": [int(Q.shape[1]) for Q in Qs],
            "overlap_mean": mean("overlap"),
            "atom_pw_mcc_mean": mean("atom_pw_mcc"),
            "null_overlap_mean": mean("null_overlap"),
            "pairs": pairs,
        }
    return out


def finite(x: float) -> float | None:
    """NaN/inf -> None, for JSON."""
    return x if x is not None and math.isfinite(x) else None
