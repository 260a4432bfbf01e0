"""Oracle dictionaries: the hook's ground truth made into an SAE decoder, and scored by the SAE's
own objective at a cell's width and L0.

Why: an SAE that misses the model's features can do so for two reasons. Either its loss prefers
something else at this width and L0 (the objective), or a dictionary of the true features would
reconstruct better and training simply does not find it (the optimisation). A dictionary built from
the ground truth and coded as well as possible tells the two apart: its explained variance at the
same width and L0, minus the trained SAEs', is the optimisation gap.

The complete truth of a hook is a set of circles. For each key frequency k (w = 2 pi k / n) and each
index i of the group grid (husai.analysis.ground_truth) -- the answer c, the inputs x and y, and the
conjugate (a - b for addition) -- the activations' component that is a function of cos(w i),
sin(w i) is a curve  theta -> (cos theta v_cos + sin theta v_sin) / sqrt(N / 2),  where v_cos,
v_sin [d] are the images of the unit-norm functions (the plane's images). Its variance share is
||v_cos||^2 + ||v_sin||^2 over ||X||^2, and what the circles together leave out is the stated
remainder. Where the a- and b-planes of a frequency coincide (they do in a grokked model) they are
one input circle: the input component is then a point of the a-curve plus one of the b-curve, a
point inside the same disk, which two atoms of one tiling code exactly. A circle tiling puts
m unit atoms on each circle at evenly spaced phases phi_j = phi_0 + 2 pi j / m; phi_0 is a seeded
draw, so oracles of different seeds are equally true and different. Two atoms of a circle whose cone
holds a point reconstruct it exactly with non-negative weights, so L0 = 2 x circles codes the
circles' share exactly (m >= 3 makes every point of the circle lie in such a cone).

Width rule (`tiling`): the circles sorted by share, as many as fit, a plane taking 3 atoms and a
line 2 (a circle whose sine image is under REL_DIM of its cosine image by singular value is a line,
as the ground truth counts dimensions: the (a - b) circles of a grokked model, whose function of
a - b is even, cos(w (a - b)) alone; its two atoms +-u code it exactly); then what the lines leave
of the width split evenly over the planes, m = rest // planes; the atoms left over are left out.

Scoring (`best_code`): the best non-negative code of at most k atoms per input with the decoder
fixed, by greedy pursuit (the atom most correlated with the residual) with a non-negative least-
squares refit of the chosen atoms after each choice (coordinate descent); tested against brute
force on small cases. Greedy pursuit is not the exact optimum (that is a combinatorial search), so
the oracle's EV is a lower bound on what its dictionary can do: an "optimisation" reading (the
oracle above the SAEs) is conservative, an "objective" reading (the oracle below) could in part be
the pursuit's shortfall. b_dec is the data mean. For the L1 families (ReLU, JumpReLU) k is the
trained SAEs' mean L0, rounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from husai.analysis.ground_truth import REL_DIM, Grid, _unit_functions

CIRCLE_FLOOR = 1e-3
"""A circle holding less than 0.1% of the variance is not part of the truth a dictionary should
tile."""

MIN_ATOMS = 3
"""Atoms per circle: with 3 or more, every point of the circle lies in the cone of two of them."""
LINE_ATOMS = 2
"""Atoms per line (a circle with no sine image): +-u code every point of it."""

INDICES = ("out", "in-a", "in-b", "conj")
"""The circles of a frequency: of the answer, of x, of y, of the conjugate
(husai.analysis.ground_truth)."""


@dataclass
class Circle:
    """One circle of the truth: images [2, d] of cos(w i), sin(w i) (unit functions), its variance
    share."""

    name: str
    frequency: int
    images: torch.Tensor
    share: float
    n_inputs: int
    """N, the grid's inputs: the activations' point at phase theta is point(theta) / sqrt(N / 2)."""

    def point(self, theta: torch.Tensor) -> torch.Tensor:
        """theta [m] -> the circle's directions [m, d] at those phases (not normalised)."""
        return (
            torch.cos(theta)[:, None] * self.images[0] + torch.sin(theta)[:, None] * self.images[1]
        )

    @property
    def is_line(self) -> bool:
        """The sine image is under REL_DIM of the cosine image (by singular value): a line."""
        s = torch.linalg.svdvals(self.images.double())
        return bool(s[1] < REL_DIM * s[0])

    def radius(self, theta: torch.Tensor) -> torch.Tensor:
        """theta [m] -> how far the activations' curve lies from the mean at those phases [m]."""
        return self.point(theta).norm(dim=1) / math.sqrt(self.n_inputs / 2)


def truth_circles(X: torch.Tensor, grid: Grid, freqs: list[int]) -> list[Circle]:
    """The circles (module docstring) of the key frequencies in the centred X [N, d] (grid order)
    that hold at least CIRCLE_FLOOR of its variance, largest first."""
    total = float(X.pow(2).sum())
    index = dict(zip(INDICES, (grid.answer, grid.x, grid.y, grid.conjugate)))
    out = []
    for k in freqs:
        if 2 * k == grid.n:  # the sine vanishes: a line, not a circle
            continue
        images = {
            name: _unit_functions(idx, grid.n, k).T @ X for name, idx in index.items()
        }  # [2, d] each
        if _coincide(
            images["in-a"], images["in-b"]
        ):  # one input plane (a trained model's): one tiling codes
            both = images.pop("in-a") + images.pop(
                "in-b"
            )  # a point of the a-curve plus one of the b-curve
            images = {
                "in": both / math.sqrt(2),
                **images,
            }  # the a- and b-curves' mean direction, their share
        for name, im in images.items():
            share = float(im.pow(2).sum()) / total
            if share >= CIRCLE_FLOOR:
                out.append(Circle(f"{name} {k}", k, im, share, int(X.shape[0])))
    return sorted(out, key=lambda c: -c.share)


COINCIDE = 0.9
"""The a- and b-planes of a frequency are one plane when both principal cosines between them are
>= 0.9."""


def _coincide(A: torch.Tensor, B: torch.Tensor) -> bool:
    Qa, Qb = torch.linalg.qr(A.T)[0], torch.linalg.qr(B.T)[0]
    return bool(torch.linalg.svdvals(Qa.T @ Qb).min() >= COINCIDE)


def complete_truth(X: torch.Tensor, circles: list[Circle]) -> dict:
    """How much of the centred X [N, d] the circles explain: each one's share, their sum, the share
    of the span of all their images, and the remainder (1 - that span's share): what no circle
    tiling can code."""
    total = float(X.pow(2).sum())
    span = float((X @ circle_span(circles).to(X.dtype)).pow(2).sum()) / total if circles else 0.0
    return dict(
        circles={c.name: c.share for c in circles},
        circles_sum=sum(c.share for c in circles),
        span_share=span,
        remainder=max(0.0, 1.0 - span),
    )


def circle_span(circles: list[Circle]) -> torch.Tensor:
    """An orthonormal basis [d, r] (float64) of the span of all the circles' images: the truth's
    span, where recovery against the complete truth is measured (husai.analysis.plane_recovery)."""
    _, s, Vh = torch.linalg.svd(
        torch.cat([c.images.double() for c in circles]), full_matrices=False
    )
    return Vh[: int((s > 1e-9 * s[0]).sum())].T


def tiling(circles: list[Circle], width: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """A circle tiling of at most `width` unit atoms (the width rule in the module docstring) ->
    (atoms [m_total, d], one {circle, phase, radius, spacing} per atom: the curve's distance from
    the mean at that phase and the phase step). Each circle's phase offset phi_0 is drawn from
    `seed`."""
    chosen, used = [], 0
    for c in circles:
        need = LINE_ATOMS if c.is_line else MIN_ATOMS
        if used + need > width:
            break
        chosen.append(c)
        used += need
    planes = [c for c in chosen if not c.is_line]
    if not chosen:
        raise ValueError(f"a width of {width} cannot tile any circle ({MIN_ATOMS} atoms each)")
    lines = len(chosen) - len(planes)
    m = (width - LINE_ATOMS * lines) // len(planes) if planes else 0
    g = torch.Generator().manual_seed(seed)
    atoms, labels = [], []
    for c in chosen:
        if c.is_line:  # +-u: no phase to draw
            theta = torch.tensor([0.0, math.pi], dtype=torch.float64)
            atoms.append(c.point(theta))
            labels += [
                dict(circle=c.name, phase=float(t), radius=float(r), spacing=math.pi)
                for t, r in zip(theta, c.radius(theta))
            ]
            continue
        phi0 = float(torch.rand((), generator=g, dtype=torch.float64)) * 2 * math.pi / m
        theta = phi0 + 2 * math.pi * torch.arange(m, dtype=torch.float64) / m
        atoms.append(c.point(theta))
        labels += [
            dict(circle=c.name, phase=float(t), radius=float(r), spacing=2 * math.pi / m)
            for t, r in zip(theta, c.radius(theta))
        ]
    A = torch.cat(atoms)
    return A / A.norm(dim=1, keepdim=True).clamp_min(1e-30), labels


def neuron_atoms(X: torch.Tensor, width: int) -> torch.Tensor:
    """At a hook whose coordinates are the model's neurons (mlp.hook_post): the `width` neurons of
    largest variance as unit atoms (one-hot rows) -> [min(width, d), d]. The MLP's basis is
    privileged (a ReLU acts on each coordinate), and a grokked model's neurons are mostly
    single-frequency: they are the model's own features at that hook, a second oracle beside the
    circles."""
    top = X.pow(2).sum(0).argsort(descending=True)[: min(width, X.shape[1])].sort().values
    return torch.eye(X.shape[1], dtype=X.dtype)[top]


def unit_rows(D: torch.Tensor) -> torch.Tensor:
    return D / D.norm(dim=1, keepdim=True).clamp_min(1e-30)


def best_code(
    X: torch.Tensor, D: torch.Tensor, k: int, sweeps: int = 1, final_sweeps: int = 20
) -> torch.Tensor:
    """The best non-negative code of at most k atoms per row: X [N, d] (centred), D [m, d] (unit
    rows) -> Z [N, m] with <= k non-zeros a row, by greedy pursuit with a non-negative refit (module
    docstring): after each choice, coordinate descent on the chosen atoms' least squares with z >= 0
    (`sweeps` passes, `final_sweeps` after the last), from the Gram matrix of each row's chosen
    atoms, grown one row and column a choice. float32 (the scores are taken in float64 by
    code_scores)."""
    N, m = X.shape[0], D.shape[0]
    k = min(k, m)
    X, D = X.float(), D.float()
    C, G = X @ D.T, D @ D.T  # [N, m], [m, m]
    support = torch.zeros(N, k, dtype=torch.long)
    z = X.new_zeros(N, k)
    Gs = X.new_zeros(N, k, k)  # Gs[n, i, j] = <d_support[n, i], d_support[n, j]>
    cs = X.new_zeros(N, k)  # <x_n, d_support[n, i]>
    corr = C.clone()  # the residual's correlations, R D^T = C - Z G
    rows = torch.arange(N)
    for t in range(k):
        best = corr.argmax(1)
        support[:, t] = best
        Gs[:, t, : t + 1] = G[best[:, None], support[:, : t + 1]]
        Gs[:, : t + 1, t] = Gs[:, t, : t + 1]
        cs[:, t] = C[rows, best]
        z[:, t] = corr[rows, best].clamp_min(0)  # <= 0: nothing to gain, it stays 0
        for _ in range(sweeps if t < k - 1 else final_sweeps):
            for j in range(t + 1):
                step = (cs[:, j] - (Gs[:, j, : t + 1] * z[:, : t + 1]).sum(1)) / Gs[
                    :, j, j
                ].clamp_min(1e-30)
                z[:, j] = (z[:, j] + step).clamp_min(0)
        if t < k - 1:
            # Z G with Z sparse, t + 1 non-zeros a row: N (t+1) m multiply-adds, not the dense
            # N m^2 (512 random atoms, k 32, 2 threads: 1.5 s a dictionary, 2.3 s dense)
            Z = torch.sparse_coo_tensor(
                torch.stack([rows.repeat_interleave(t + 1), support[:, : t + 1].reshape(-1)]),
                z[:, : t + 1].reshape(-1),
                (N, m),
                check_invariants=False,
            )
            corr = C - Z @ G
            corr.scatter_(1, support[:, : t + 1], -math.inf)  # an atom is chosen once
    return X.new_zeros(N, m).scatter_(1, support, z).double()


def code_scores(X: torch.Tensor, D: torch.Tensor, Z: torch.Tensor) -> dict:
    """EV (centred: X is centred, b_dec the mean), mean L0, dead atoms (never used) of the code Z
    for X."""
    total = float(X.double().pow(2).sum())
    ev = 1.0 - float((X.double() - Z @ D.double()).pow(2).sum()) / total
    used = Z > 0
    return dict(
        explained_variance=ev,
        l0=float(used.sum(1).double().mean()),
        frac_dead=float((~used.any(0)).double().mean()),
        atoms=int(D.shape[0]),
    )


def score(X: torch.Tensor, D: torch.Tensor, k: int) -> dict:
    """An oracle dictionary D [m, d] scored at <= k atoms an input: best_code then code_scores."""
    D = unit_rows(D.double())
    return code_scores(X, D, best_code(X, D, k))
