"""Recovery scored against the complete truth, plane by plane: which live decoder rows lie in each
circle's plane of husai.analysis.oracle (the answer/output, input and (a - b) planes of every key
frequency that complete_truth keeps), how much of the plane they cover, and how evenly they tile
its phase; next to the oracle tiling (the ceiling, built on these planes) and a reference that has
learned nothing.

The metric (docs/methods.md, "The data metric", as husai.analysis.recovery.plane_scores): a row is
projected into the truth's span (the span of all circles' images, what complete_truth's span share
measures) and scaled to unit norm. Its in-plane fraction for a circle is the squared norm of its
part in that circle's plane (orthonormal basis B [d, 2] of the images). Projection keeps the
Euclidean metric of the SAE's own MSE; directions outside the truth are invisible to it.

    lies in the plane   in-plane fraction > IN_PLANE (0.5, the latent-types and plane_scores rule),
                        for the plane holding most of it; the planes are nearly orthogonal, so at
                        most one plane can hold more than half of a row, and the argmax makes each
                        row count once where they are not.
    coverage            min over unit directions u of the plane of max over its latents of
                        cos(u, B^T y) clipped at 0: the worst-covered direction. Every direction of
                        the plane is one of the truth's points (the curve theta -> cos theta v_cos
                        + sin theta v_sin turns once around the origin), so it is the worst-served
                        point of the truth's curve. In closed form, with G the largest angular gap
                        between the latents' directions in the plane, max(0, cos(G / 2)): m evenly
                        spaced atoms score cos(pi / m) (3: 0.5, 4: 0.71, 8: 0.92); no latent, one,
                        or two opposite ones score 0 (some direction has no latent within 90
                        degrees). It uses the rows' in-plane parts: which rows belong is the rule
                        above, how they spread is this.
    evenness            1 - (G_phase - 2 pi / n) / (2 pi - 2 pi / n) for n >= 2 latents, 0 below:
                        G_phase the largest gap between their phases, each phase the theta with
                        point(theta) along the row's in-plane part (the input's phase w i that
                        activates that direction). 1 for phases 2 pi / n apart, 0 for one phase.
                        It is the phase a tiling spaces evenly, so the oracle scores 1 exactly,
                        also on an elliptical circle, where its coverage falls below cos(pi / m).

A circle whose sine image is under REL_DIM (5%) of its cosine image by singular value is a line,
as the ground truth counts a plane's dimension (husai.analysis.ground_truth). The (a - b) circles
of a grokked model are: a and b enter the activations symmetrically, so their function of a - b is
even, cos(w (a - b)) alone (sine/cosine 0.001-0.008 on the `fast` model). On a line the two
directions are +-u: coverage is 1 with rows on both sides and 0 otherwise, and evenness is the
balance of the sides, min(n+, n-) / floor(n / 2) (0 below two rows). Tiling a line by phase puts
its atoms on these two directions.

Per SAE (`summary`): the variance-weighted mean coverage and evenness (each circle weighted by its
share of the variance, complete_truth's), the planes with at least TILED latents (with fewer no
arrangement covers the plane: coverage is 0), and the share of the live latents that lie in some
plane.

Reference (`rotated`): the SAE's own rows, each seed's, rotated by a random (Haar) orthogonal matrix
inside the 99.9% data span, drawn REFERENCE_DRAWS times (seeded). It keeps everything about the
dictionary (its size, its rows' in-span norms and every angle between them, so a dictionary built
of tight clusters stays one) but its orientation to the truth: what that geometry scores by chance.
Neither the truth nor the init: data-point rows (the default init) already sit near the answer
centroids at resid_post, hence near the output circles; isotropic random rows would lose the
dictionary's geometry.
"""

from __future__ import annotations

import math

import torch

from husai.analysis.ground_truth import REL_DIM
from husai.analysis.latent_types import IN_PLANE
from husai.analysis.oracle import MIN_ATOMS, Circle, circle_span
from husai.analysis.recovery import REFERENCE_DRAWS

TILED = MIN_ATOMS
"""A plane is tiled when at least 3 latents lie in it: fewer leave a direction with no latent
within 90 degrees (coverage 0), as for the oracle's atoms (husai.analysis.oracle.MIN_ATOMS)."""


def plane_basis(circle: Circle) -> torch.Tensor:
    """An orthonormal basis of the circle's plane [d, 2], or of its line [d, 1] when the second
    singular value of the images [2, d] is under REL_DIM of the first (float64)."""
    _, s, Vh = torch.linalg.svd(circle.images.double(), full_matrices=False)
    return Vh[: 1 + int(s[1] >= REL_DIM * s[0])].T


def largest_gap(angles: torch.Tensor) -> float:
    """The largest gap between consecutive angles [n] around the circle (radians); 2 pi for one or
    none."""
    if angles.numel() < 2:
        return 2 * math.pi
    a = torch.remainder(angles.double(), 2 * math.pi).sort().values
    gaps = torch.cat([a[1:] - a[:-1], (a[:1] + 2 * math.pi) - a[-1:]])
    return float(gaps.max())


def coverage(in_plane: torch.Tensor) -> float:
    """The worst-covered direction's best cosine (module docstring) of the in-plane parts [n, 2]
    of a plane's latents, in orthonormal plane coordinates. -> max(0, cos(largest gap / 2)). On a
    line, parts [n, 1]: 1 with rows on both sides, else 0."""
    if in_plane.shape[0] == 0:
        return 0.0
    if in_plane.shape[1] == 1:
        return float(bool((in_plane > 0).any() and (in_plane < 0).any()))
    return max(0.0, math.cos(largest_gap(torch.atan2(in_plane[:, 1], in_plane[:, 0])) / 2))


def phases(circle: Circle, rows: torch.Tensor) -> torch.Tensor:
    """The circle's phase theta of each row [n, d]: point(theta) along the row's part in the plane,
    from its coefficients on the images (least squares) -> [n] radians."""
    coef = torch.linalg.lstsq(circle.images.double().T, rows.double().T).solution  # [2, n]
    return torch.atan2(coef[1], coef[0])


def line_evenness(x: torch.Tensor) -> float:
    """The balance of n >= 2 rows' sides of a line, their coordinates x [n]: min(n+, n-) /
    floor(n / 2); 0 for fewer."""
    n = x.numel()
    if n < 2:
        return 0.0
    return min(int((x > 0).sum()), int((x < 0).sum())) / (n // 2)


def evenness(theta: torch.Tensor) -> float:
    """1 - (largest phase gap - 2 pi / n) / (2 pi - 2 pi / n) of n >= 2 phases [n]; 0 for fewer."""
    n = theta.numel()
    if n < 2:
        return 0.0
    step = 2 * math.pi / n
    return 1.0 - (largest_gap(theta) - step) / (2 * math.pi - step)


def plane_scores(rows: torch.Tensor, circles: list[Circle], span: torch.Tensor) -> dict:
    """Rows [n, d] (live decoder rows or atoms, any norm) against the circles, inside the truth's
    span [d, r] (orthonormal; circle_span) -> {planes: {name: {share, latents, coverage, evenness,
    in_plane}}, summary: `summary`}. in_plane: the plane's latents' mean in-plane fraction."""
    Y = rows.double() @ span @ span.T
    Y = Y / Y.norm(dim=1, keepdim=True).clamp_min(1e-30)  # [n, d], unit in the span
    parts = [Y @ plane_basis(c) for c in circles]  # [n, dim] plane (line) coordinates each
    frac = torch.stack([x.pow(2).sum(1) for x in parts], 1) if circles else Y.new_zeros(len(Y), 0)
    best = frac.argmax(1) if len(circles) else torch.zeros(len(Y), dtype=torch.long)
    lies = (frac.max(1).values > IN_PLANE) if len(circles) else torch.zeros(len(Y), dtype=bool)
    planes = {}
    for j, c in enumerate(circles):
        mine = lies & (best == j)
        x = parts[j][mine]
        even = line_evenness(x[:, 0]) if x.shape[1] == 1 else evenness(phases(c, Y[mine]))
        planes[c.name] = dict(
            share=c.share,
            dim=int(x.shape[1]),
            latents=int(mine.sum()),
            coverage=coverage(x),
            evenness=even if len(x) >= 2 else 0.0,
            in_plane=float(frac[mine, j].mean()) if mine.any() else None,
        )
    share = float(lies.double().mean()) if len(Y) else 0.0
    return dict(planes=planes, summary=summary(planes, share))


def summary(planes: dict, in_plane_share: float) -> dict:
    """Per dictionary: coverage and evenness averaged over the planes weighted by their variance
    shares, the planes with >= TILED latents, the share of rows lying in some plane."""
    total = sum(p["share"] for p in planes.values()) or 1.0
    return dict(
        coverage=sum(p["share"] * p["coverage"] for p in planes.values()) / total,
        evenness=sum(p["share"] * p["evenness"] for p in planes.values()) / total,
        planes_tiled=sum(p["latents"] >= TILED for p in planes.values()),
        planes=len(planes),
        in_plane_share=in_plane_share,
    )


def rotated(rows: torch.Tensor, data_basis: torch.Tensor, seed: int) -> torch.Tensor:
    """The reference (module docstring): rows [n, d] -> their data-span parts rotated by a Haar
    orthogonal matrix of the span [r, r] drawn from `seed`, back in [n, d]. data_basis [d, r]
    orthonormal (husai.analysis.data_span)."""
    g = torch.Generator().manual_seed(seed)
    r = data_basis.shape[1]
    Q, R = torch.linalg.qr(torch.randn(r, r, generator=g, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))  # Haar: the sign fix makes QR's factor uniform
    return (rows.double() @ data_basis) @ Q @ data_basis.double().T


def plane_recovery(
    rows: torch.Tensor,
    circles: list[Circle],
    data_basis: torch.Tensor,
    oracle: torch.Tensor | None = None,
    draws: int = REFERENCE_DRAWS,
) -> dict:
    """One SAE's plane recovery: its live rows [n, d] scored by plane_scores, the oracle's atoms
    [m, d] (the seed's circle tiling) likewise, and the rotated reference over `draws` seeded draws
    (per plane and in summary: the mean over draws; `draws` lists each draw's summary).
    data_basis [d, r]: the 99.9% data span, where the reference rotates. -> JSON-ready dict with
    summary, oracle, reference (summaries) and planes {name: {share, sae, oracle, reference}}."""
    span = circle_span(circles)
    sae = plane_scores(rows, circles, span)
    ref = [plane_scores(rotated(rows, data_basis, seed), circles, span) for seed in range(draws)]
    orc = plane_scores(oracle, circles, span) if oracle is not None else None
    keys = ("latents", "coverage", "evenness")
    planes = {
        name: dict(
            share=entry["share"],
            sae=entry,
            oracle=orc["planes"][name] if orc else None,
            reference={k: sum(r["planes"][name][k] for r in ref) / len(ref) for k in keys},
        )
        for name, entry in sae["planes"].items()
    }
    skeys = ("coverage", "evenness", "planes_tiled", "in_plane_share")
    return dict(
        summary=sae["summary"],
        oracle=orc["summary"] if orc else None,
        reference=dict(
            {k: sum(r["summary"][k] for r in ref) / len(ref) for k in skeys},
            draws=[r["summary"] for r in ref],
        ),
        planes=planes,
    )
