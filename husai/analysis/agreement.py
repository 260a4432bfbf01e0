"""Do the seeds learn the same features? Seed agreement at every level, in the data metric, each
figure with a bootstrap CI over seeds and the nulls that fit the geometry.

Everything is measured on live latents only (a latent that never fires on the p^2 inputs is not a
feature), with decoder and encoder rows in the data span's coordinates (husai.analysis.data_span:
rotating the activations leaves every number here unchanged).

Levels, each a symmetric [N, N] matrix over the N seeds:
  atoms        pw_mcc_dec / pw_mcc_enc: Hungarian-matched signed cosine (Song et al. 2025);
               mean_max_abs_cos_dec: the public HUSAI repository's "PWMCC" (no matching, sign
               ignored);
               shared_fraction: pairs matched on the encoder whose encoder AND decoder cosines
               exceed the threshold (Paulo & Belrose 2025); reappearance: the share of latents whose
               best match in the other seed exceeds the threshold (Gerasimov et al. 2026, averaged
               over both directions).
  activations  act_mcc: latents matched (Hungarian) by the correlation of their activations over all
               inputs; act_reappearance: share of latents with a best correlation above the
               threshold.
  ground truth plane_coverage_agreement: 1 - mean over planes of |coverage_i - coverage_j|;
               mass_agreement: 1 - total-variation distance between the two dictionaries' mass over
               the planes (and the rest); class_jaccard: Jaccard of the answer classes whose
               centroid some live latent matches at cosine >= threshold.
Per latent (so a user can sort latents by stability): the probability that it reappears in another
seed (best cosine >= threshold), its mean best cosine and mean best activation correlation.

Uncertainty: seeds are the independent units, so the CI resamples seeds (with replacement) and
averages the pairs of distinct draws (`bootstrap_ci`); with 5 seeds it is wide, as it should be.

Nulls: every null declared in husai.analysis.measures is drawn once per seed pair (from that pair's
own generator), so "effect" = mean over pairs of (value - null) has a CI. Each measure is read
against its "fitting" null (Measure.fitting: matched geometry for atoms, random in span for answer
classes) and separately against the symmetry null, the phase reading: above it, the seeds agree on
phase (which latents exist, not only which planes they tile). docs/methods.md, "Seed agreement".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from husai.analysis.data_span import DataSpan
from husai.analysis.measures import NULLS, PAIR_LEVELS, TRUTH_LEVELS, fitting, measures, nulls_for
from husai.analysis.stability import SHARED_THRESHOLD, hungarian, mean_max_abs_cos_from_cos, unit

BOOTSTRAP = 2000
# The plane coverage and mass agreements have no chance null: two random in-span dictionaries of
# ~2000 atoms already agree at ~0.96 / ~0.99 (a mass is an average over many atoms, a function of
# the dictionary's second moment alone), so they are descriptive figures (husai.analysis.measures).


@dataclass
class SeedView:
    """One SAE as the data metric sees it: its live latents only."""

    label: str
    live: np.ndarray
    """[n] indices of the live latents (fired on some input)."""
    dec: torch.Tensor
    """[n, r] unit decoder rows in span coordinates."""
    enc: torch.Tensor
    """[n, r] unit encoder rows (W_enc columns) in span coordinates."""
    codes: torch.Tensor | None = None
    """[N_inputs, n] the live latents' activations on every input (None: no activation level)."""

    @property
    def n(self) -> int:
        return len(self.live)

    def codes_T_sparse(self) -> torch.Tensor:
        """codes^T [n, N] as a sparse tensor, built once (the conversion costs as much as the
        product)."""
        if getattr(self, "_sparse", None) is None:
            self._sparse = self.codes.T.to_sparse()
        return self._sparse


def seed_view(
    label: str,
    W_dec: torch.Tensor,
    W_enc_T: torch.Tensor,
    span: DataSpan,
    z: torch.Tensor | None = None,
    live: torch.Tensor | None = None,
) -> SeedView:
    """W_dec, W_enc_T [d_sae, d_in]; z [N, d_sae] codes on every input (gives live and the
    activation level) or live [d_sae] bool (then no activation level). Without either every latent
    counts as live."""
    if live is None:
        live = (z != 0).any(0) if z is not None else torch.ones(W_dec.shape[0], dtype=torch.bool)
    idx = torch.nonzero(live.cpu()).flatten()
    codes = (
        z[:, idx].float() if z is not None else None
    )  # float32: 100 MB per 2048-latent seed on p^2 = 12769 inputs
    return SeedView(
        label, idx.numpy(), span.unit_coords(W_dec[idx]), span.unit_coords(W_enc_T[idx]), codes
    )


def correlation(
    ZA: torch.Tensor, ZB: torch.Tensor, ZA_T_sparse: torch.Tensor | None = None
) -> torch.Tensor:
    """Pearson correlations [n_A, n_B] between the columns of ZA [N, n_A] and ZB [N, n_B]
    (ZA_T_sparse: ZA^T as a sparse tensor, if already built).

    Codes are sparse (L0 ~32 of 2048 latents), so the cross product runs as a sparse x dense
    matmul and is centred afterwards: sum_n (a - mu_a)(b - mu_b) = A^T B - N mu_a mu_b^T
    (measured: 0.3 s against 2.6 s dense for 12769 inputs x 2048 latents, float64)."""
    N = ZA.shape[0]
    f64 = torch.float64  # moments summed in float64: a dense latent's sum z^2 - N mu^2 cancels
    mu_a, mu_b = ZA.sum(0, dtype=f64) / N, ZB.sum(0, dtype=f64) / N
    sd_a = (ZA.pow(2).sum(0, dtype=f64) - N * mu_a.pow(2)).clamp_min(0).sqrt().clamp_min(1e-30)
    sd_b = (ZB.pow(2).sum(0, dtype=f64) - N * mu_b.pow(2)).clamp_min(0).sqrt().clamp_min(1e-30)
    cross = torch.sparse.mm(ZA.T.to_sparse() if ZA_T_sparse is None else ZA_T_sparse, ZB).to(f64)
    C = (cross - N * torch.outer(mu_a, mu_b)) / torch.outer(sd_a, sd_b)
    # a (near-)constant latent has no correlation: its sd is float32 rounding residue (a latent at
    # 3.7 on every input gave 4e32), so it is set to 0; the rest is clamped to [-1, 1] against
    # rounding
    flat_a = sd_a < 1e-6 * (mu_a.abs() * N**0.5).clamp_min(1e-30)
    flat_b = sd_b < 1e-6 * (mu_b.abs() * N**0.5).clamp_min(1e-30)
    C[flat_a] = 0.0
    C[:, flat_b] = 0.0
    return C.clamp(-1.0, 1.0)


def _reappear(C: torch.Tensor, threshold: float) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(symmetrised share of best matches >= threshold, best of each row [n], best of each column
    [m])."""
    r, c = C.amax(1), C.amax(0)
    return float(((r >= threshold).double().mean() + (c >= threshold).double().mean()) / 2), r, c


def pair_agreement(
    A: SeedView, B: SeedView, threshold: float = SHARED_THRESHOLD, tied: bool = False
) -> tuple[dict, dict]:
    """Atom and activation metrics of one seed pair (module docstring).

    tied: the encoders equal the decoders (null dictionaries): one Hungarian serves both.
    Returns (metrics {name: float}, best matches {"A": {best_cos [n_A], best_corr}, "B": {...}})."""
    if A.n == 0 or B.n == 0:
        return {m: None for m in measures(*PAIR_LEVELS)}, {}
    cos_dec = A.dec @ B.dec.T  # [n_A, n_B]
    _, _, matched_dec = hungarian(cos_dec)
    cos_enc = cos_dec if tied else A.enc @ B.enc.T
    rows, cols, matched_enc = hungarian(cos_enc)
    # Paulo & Belrose: pairs matched on the encoder whose encoder AND decoder cosines pass
    both = (cos_enc.numpy()[rows, cols] > threshold) & (cos_dec.numpy()[rows, cols] > threshold)
    reap, best_a, best_b = _reappear(cos_dec, threshold)
    out = dict(
        pw_mcc_dec=float(matched_dec.mean()),
        mean_max_abs_cos_dec=mean_max_abs_cos_from_cos(cos_dec),
        pw_mcc_enc=float(matched_enc.mean()),
        shared_fraction=float(both.mean()),
        reappearance=reap,
    )
    best = {"A": {"best_cos": best_a}, "B": {"best_cos": best_b}}
    if A.codes is not None and B.codes is not None:
        Cz = correlation(A.codes, B.codes, A.codes_T_sparse())  # [n_A, n_B]
        _, _, vz = hungarian(Cz)
        out["act_mcc"] = float(vz.mean())
        out["act_reappearance"], best["A"]["best_corr"], best["B"]["best_corr"] = _reappear(
            Cz, threshold
        )
    else:
        out["act_mcc"] = out["act_reappearance"] = None
    return out, best


def bootstrap_ci(
    M: np.ndarray, n_boot: int = BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> list | None:
    """CI of the mean over seed pairs of a symmetric [N, N] matrix (NaN = missing), resampling
    seeds.

    Each bootstrap draw picks N seeds with replacement and averages M over the pairs of draws that
    are different seeds; a draw with no such pair (all the same seed) is skipped."""
    M = np.asarray(M, dtype=np.float64)
    N = M.shape[0]
    if N < 3 or not np.isfinite(M[np.triu_indices(N, 1)]).any():
        # two seeds are one pair: no spread to resample (with 3 the CI is the pairs' range)
        return None
    idx = np.random.default_rng(seed).integers(0, N, size=(n_boot, N))
    V = M[idx[:, :, None], idx[:, None, :]]  # [n_boot, N, N]
    ok = (idx[:, :, None] < idx[:, None, :]) & np.isfinite(
        V
    )  # distinct seeds, each unordered pair once
    cnt = ok.sum((1, 2))
    means = np.where(ok, V, 0).sum((1, 2))[cnt > 0] / cnt[cnt > 0]
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def _pair_mean(M: np.ndarray) -> float | None:
    v = M[np.triu_indices(M.shape[0], 1)]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def summarise(M: np.ndarray, nulls: dict[str, np.ndarray], fitting: tuple[str, ...] = ()) -> dict:
    """value (mean over pairs) with its CI, and per null its mean, the effect (value - null, paired
    by seed pair) with the effect's CI; `fitting`: the effect against the pairwise max of those
    nulls."""
    v = M[np.triu_indices(M.shape[0], 1)]
    out = dict(
        value=_pair_mean(M),
        ci=bootstrap_ci(M),
        std=float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else None,
        n_pairs=int(np.isfinite(v).sum()),
        matrix=[[None if not np.isfinite(x) else float(x) for x in r] for r in M],
        nulls={},
    )
    for kind, Nm in nulls.items():
        out["nulls"][kind] = dict(
            value=_pair_mean(Nm),
            ci=bootstrap_ci(Nm),
            effect=_pair_mean(M - Nm),
            effect_ci=bootstrap_ci(M - Nm),
        )
    have = [k for k in fitting if k in nulls]
    if have:
        strict = np.fmax.reduce(
            np.stack([nulls[k] for k in have]), axis=0
        )  # NaN only where every null is
        out["fitting"] = dict(
            nulls=have,
            value=_pair_mean(strict),
            effect=_pair_mean(M - strict),
            effect_ci=bootstrap_ci(M - strict),
        )
    if "symmetry" in nulls:  # the phase reading (husai.analysis.measures)
        out["phase"] = dict(
            nulls=["symmetry"],
            value=out["nulls"]["symmetry"]["value"],
            effect=out["nulls"]["symmetry"]["effect"],
            effect_ci=out["nulls"]["symmetry"]["effect_ci"],
        )
    return out


def in_threads(fn, args: list[tuple]) -> list:
    """[fn(*a) for a in args], on as many threads as torch may use (in order). The seed-pair work is
    mostly scipy's Hungarian, which releases the GIL: on 2 cores, 4 assignments of 2000 x 2000 took
    0.80 s on 2 threads against 1.61 s on one (measured)."""
    workers = min(len(args), torch.get_num_threads())
    if workers <= 1:
        return [fn(*a) for a in args]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda a: fn(*a), args))


def _matrix(N: int) -> np.ndarray:
    M = np.full((N, N), np.nan)
    np.fill_diagonal(M, 1.0)
    return M


def _null_view(D: torch.Tensor, label: str) -> SeedView:
    return SeedView(label, np.arange(len(D)), D, D)


def seed_agreement(
    views: list[SeedView],
    threshold: float = SHARED_THRESHOLD,
    grid: tuple | None = None,
    seed: int = 0,
) -> dict:
    """Atom- and activation-level agreement of N >= 2 seeds with their nulls (module docstring).

    grid: (Y [p^2, r] span coordinates of the centred activations in grid order, p) enables the
    symmetry null; None (a user's activations) omits it.
    Returns {"levels": {metric: summarise(...)}, "per_latent": {label: {index, reappearance,
    best_cos, best_corr}}, "threshold"}."""
    N = len(views)
    names = measures(*PAIR_LEVELS)
    mats = {m: _matrix(N) for m in names}
    drawn = [n.name for n in NULLS.values() if n.pair is not None]
    nulls = {k: {m: _matrix(N) for m in names} for k in drawn}
    best: list[dict[str, list]] = [dict(best_cos=[], best_corr=[]) for _ in views]
    fits: dict[str, list[float]] = {
        k: [] for k in drawn
    }  # each draw's quality (Draw.fit), pair order
    r = views[0].dec.shape[1]

    def one_pair(n_pair: int, i: int, j: int) -> tuple:
        """Everything seed pair (i, j) contributes; a function of the pair alone (its own generator,
        which the nulls consume in their declaration order)."""
        gen = torch.Generator().manual_seed(seed + 7919 * n_pair)
        vals, b = pair_agreement(views[i], views[j], threshold)
        ctx = dict(A=views[i], B=views[j], r=r, grid=grid)
        draws = {k: NULLS[k].pair(ctx, gen) for k in drawn}
        null_vals, fit = (
            {},
            {k: d.fit for k, d in draws.items() if d is not None and d.fit is not None},
        )
        for k, d in draws.items():
            if d is None or d.A is None:
                continue
            if isinstance(d.A, torch.Tensor):  # two null dictionaries: encoder = decoder
                null_vals[k] = pair_agreement(
                    _null_view(d.A, "a"), _null_view(d.B, "b"), threshold, tied=True
                )[0]
            else:
                null_vals[k] = pair_agreement(d.A, d.B, threshold)[0]
        return vals, b, null_vals, fit

    for v in views:  # built once here, not by two threads at once
        if v.codes is not None:
            v.codes_T_sparse()
    pairs = list(itertools.combinations(range(N), 2))
    for (i, j), (vals, b, null_vals, fit) in zip(
        pairs, in_threads(one_pair, [(n, i, j) for n, (i, j) in enumerate(pairs)])
    ):
        for m, v in vals.items():
            mats[m][i, j] = mats[m][j, i] = np.nan if v is None else v
        for side, k in (("A", i), ("B", j)):
            for key, lst in best[k].items():
                if key in b.get(side, {}):
                    lst.append(b[side][key])
        for kind, nv in null_vals.items():
            for m, v in nv.items():
                nulls[kind][m][i, j] = nulls[kind][m][j, i] = np.nan if v is None else v
        for kind, f in fit.items():
            fits[kind].append(f)
    levels = {}
    for m in names:
        if _any(mats[m]):
            levels[m] = summarise(
                mats[m], {k: v[m] for k, v in nulls.items() if _any(v[m])}, fitting(m)
            )
    per_latent = {}
    for v, bl in zip(views, best):
        entry = dict(index=v.live.tolist(), reappearance=None, best_cos=None, best_corr=None)
        if bl["best_cos"]:
            B = torch.stack(bl["best_cos"])  # [N - 1, n]
            entry.update(
                reappearance=(B >= threshold).double().mean(0).tolist(), best_cos=B.mean(0).tolist()
            )
        if bl["best_corr"]:
            entry["best_corr"] = torch.stack(bl["best_corr"]).mean(0).tolist()
        per_latent[v.label] = entry
    out = dict(threshold=threshold, levels=levels, per_latent=per_latent)
    out.update(
        {
            f"{k}_fit": float(np.mean(f)) if f else None
            for k, f in fits.items()
            if f or k == "symmetry"
        }
    )
    return out


def _any(M: np.ndarray) -> bool:
    """Whether the matrix has any finite off-diagonal entry (a measure, or a null, was drawn)."""
    return bool(np.isfinite(M[np.triu_indices(M.shape[0], 1)]).any())


def reference_agreement(views: list[SeedView], threshold: float = SHARED_THRESHOLD) -> dict:
    """The atom-level figures of dictionaries that are not (yet) trained SAEs, e.g. the seeds'
    initialisations (the shared-init reference: with data init they agree because the data are p
    tight clusters, not by chance) or a checkpoint along training. -> {metric: summarise(...)}."""
    N = len(views)
    mats = {m: _matrix(N) for m in ("pw_mcc_dec", "mean_max_abs_cos_dec", "shared_fraction")}
    pairs = list(itertools.combinations(range(N), 2))
    for (i, j), (vals, _) in zip(
        pairs, in_threads(lambda i, j: pair_agreement(views[i], views[j], threshold), pairs)
    ):
        for m in mats:
            mats[m][i, j] = mats[m][j, i] = np.nan if vals[m] is None else vals[m]
    return {m: summarise(M, {}) for m, M in mats.items()}


def covered_classes(
    D: torch.Tensor, centroids: torch.Tensor, threshold: float = SHARED_THRESHOLD
) -> set[int]:
    """Answer classes c whose centroid some row of D matches at cosine >= threshold.
    D [n, r], centroids [p, r]: both in the same (span) coordinates."""
    if len(D) == 0:
        return set()
    C = unit(centroids) @ unit(D).T  # [p, n]
    return set(torch.nonzero(C.amax(1) >= threshold).flatten().tolist())


def _gt_pair(a: dict, b: dict) -> dict:
    inter, union = len(a["classes"] & b["classes"]), len(a["classes"] | b["classes"])
    return dict(
        plane_coverage_agreement=float(1 - np.abs(a["coverage"] - b["coverage"]).mean()),
        mass_agreement=float(1 - 0.5 * np.abs(a["mass"] - b["mass"]).sum()),
        class_jaccard=inter / union if union else np.nan,
    )


def ground_truth_agreement(
    decoders: list[torch.Tensor],
    gt,
    threshold: float = SHARED_THRESHOLD,
    seed: int = 0,
    operation: str = "add",
) -> dict:
    """Do the seeds recover the same planes, spend the same dictionary mass on each, and cover the
    same answer classes? decoders: per seed the LIVE decoder rows [n_i, d_in]; gt: the hook's
    husai.analysis.ground_truth.GroundTruth (planes, centroids, span). Rows are compared inside the
    ground truth's span, as husai.analysis.recovery does. -> {metric: summarise(...)}, with the
    random-in-span null (two random dictionaries of the seeds' sizes) and, for (a + b) mod p, the
    symmetry null of the class sets (a shift by t moves class c to c + 2t)."""
    from husai.analysis.recovery import plane_scores

    S, p = gt.span, gt.centroids.shape[0]

    def profile(D: torch.Tensor) -> dict:
        D = unit(D.double() @ S)
        sc = plane_scores(D @ S.T, gt.planes)
        mass = np.array([sc[pl.name]["mass"] or 0.0 for pl in gt.planes])
        return dict(
            coverage=np.array([sc[pl.name]["coverage"] for pl in gt.planes]),
            mass=np.append(mass, max(0.0, 1 - mass.sum())),
            classes=covered_classes(D, gt.centroids.double() @ S, threshold),
        )

    profiles = [profile(D) for D in decoders]
    N = len(decoders)
    names = measures(*TRUTH_LEVELS)
    mats = {m: _matrix(N) for m in names}
    drawn = [n.name for n in NULLS.values() if n.truth is not None]
    nulls = {k: {m: _matrix(N) for m in names if k in nulls_for(m)} for k in drawn}
    for n_pair, (i, j) in enumerate(itertools.combinations(range(N), 2)):
        gen = torch.Generator().manual_seed(
            seed + 7919 * n_pair
        )  # consumed in the nulls' declaration order
        for m, v in _gt_pair(profiles[i], profiles[j]).items():
            mats[m][i, j] = mats[m][j, i] = v
        ctx = dict(
            A=profiles[i],
            B=profiles[j],
            sizes=(len(decoders[i]), len(decoders[j])),
            profile=profile,
            span=S,
            p=p,
            operation=operation,
        )
        for k in drawn:
            d = NULLS[k].truth(ctx, gen)
            if d is None:
                continue
            for m, v in _gt_pair(d.A, d.B).items():
                if m in nulls[k]:
                    nulls[k][m][i, j] = nulls[k][m][j, i] = v
    out = {}
    for m in names:
        if _any(mats[m]):
            out[m] = summarise(
                mats[m], {k: v[m] for k, v in nulls.items() if m in v and _any(v[m])}, fitting(m)
            )
    out["per_seed"] = [
        dict(
            coverage=pr["coverage"].tolist(), mass=pr["mass"].tolist(), n_classes=len(pr["classes"])
        )
        for pr in profiles
    ]
    out["planes"] = [pl.name for pl in gt.planes]
    return out
