"""The ground truth of a hook: what a grokked model's activations are made of, over all inputs.

The inputs form a group grid. For (a + b) and (a - b) mod p it is Z_p x Z_p with x = a, y = b; for
(a * b) mod p it is Z_{p-1} x Z_{p-1} with x = log_g a, y = log_g b for a primitive root g (the
multiplicative group is cyclic, so multiplication is addition of discrete logarithms). The 2p - 1
inputs with a = 0 or b = 0 (answer 0) are outside that group and left out; `rows` says which are
kept. The answer index is c = x + y (add, mul) or x - y (sub) mod n, and its conjugate the other
one.

Centred activations X [N, d] (one row per grid input, N = n^2) split exactly, by the 2-D DFT over
the grid (each frequency pair (u, v) is one character of the group, and characters are orthogonal):

    (0, 0)               the mean, removed by centring
    (u, 0), (0, v)       a function of x alone, of y alone                 ("a", "b")
    (u, u) / (u, -u)     a function of the answer c (add, mul / sub)       ("answer")
    (u, -u) / (u, u)     a function of the conjugate (a - b / a + b)       ("conjugate")
    everything else      the rest: interactions no single index explains

(for even n the pair (n/2, n/2) is both; it is counted as answer). Planes, per frequency k, with
w = 2 pi k / n, as directions in activation space (docs/methods.md, "Ground truth at each hook"):

    output plane P_k^out   the images of cos(w c), sin(w c): what the model writes about the answer
    input plane  P_k^in    the images of cos(w x), sin(w x), cos(w y), sin(w y): the a- and b-planes
                           (they coincide in a trained model: the same 2 directions carry both)

Each plane's image of a unit-norm function f over the grid is v = f^T X [d]; its variance share is
sum ||v||^2 / ||X||^2 (Parseval), and its dimension the number of singular values of the stacked
v's above REL_DIM of the largest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from husai.errors import HusaiError
from husai.model.data import OPERATIONS, check_modulus

REL_DIM = 0.05
"""A plane's (or span's) dimension counts singular values >= 5% of its largest, so that a
direction carrying under 0.25% of the plane's variance is not a dimension of it."""

PLANE_FLOOR = 1e-6
"""A plane direction must carry >= 1e-6 of the variance: below that it is round-off, not a
direction."""

PCA_RANKS = (2, 4, 8, 16)
KEY_SHARE = 0.05
"""Without the model's own key frequencies: a frequency is key when its output or input plane
holds >= 5% of the variance (the same 5% bar husai.model.fourier sets on the MLP neurons' summed
3x3-block shares, applied here to the hook's own planes)."""

SINGLE_FREQUENCY = 0.85
"""A neuron is single-frequency when one frequency's 3x3 block holds >= 85% of its centred
variance (Nanda et al. 2023; husai.model.fourier.PURITY_THRESHOLD)."""


def primitive_root(p: int) -> int:
    """The smallest generator of the multiplicative group mod the prime p."""
    n = p - 1
    factors = {
        q for q in range(2, n + 1) if n % q == 0 and all(q % r for r in range(2, int(q**0.5) + 1))
    }
    return (
        next(g for g in range(2, p) if all(pow(g, n // q, p) != 1 for q in factors)) if p > 2 else 1
    )


@dataclass
class Grid:
    """The inputs as a group grid: rows [N] of the p^2 activations kept, their indices x, y in Z_n,
    the answer index and its conjugate (see the module docstring)."""

    p: int
    operation: str
    n: int
    rows: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    answer: torch.Tensor
    conjugate: torch.Tensor
    names: dict = field(default_factory=dict)


def group_grid(p: int, operation: str = "add") -> Grid:
    """The grid of (a op b) mod p over husai's rows a*p + b (husai.model.data order)."""
    check_modulus(p)
    if operation not in OPERATIONS:
        raise HusaiError(f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    if operation == "mul":
        g, n = primitive_root(p), p - 1
        log = torch.zeros(p, dtype=torch.long)
        for e in range(n):
            log[pow(g, e, p)] = e
        keep = (a > 0) & (b > 0)
        # sort the kept rows by (log a, log b), so that the grid reshapes to [n, n]
        x, y = log[a[keep]], log[b[keep]]
        order = torch.argsort(x * n + y)
        rows, x, y = torch.nonzero(keep).squeeze(1)[order], x[order], y[order]
        names = dict(
            answer="c = a*b (log c = log a + log b)", conjugate="a/b", a="a (log a)", b="b (log b)"
        )
    else:
        n, rows, x, y = p, torch.arange(p * p), a, b
        names = dict(
            answer=f"c = a{'+' if operation == 'add' else '-'}b",
            conjugate=f"a{'-' if operation == 'add' else '+'}b",
            a="a",
            b="b",
        )
    plus, minus = (x + y) % n, (x - y) % n
    answer, conjugate = (minus, plus) if operation == "sub" else (plus, minus)
    return Grid(p, operation, n, rows, x, y, answer, conjugate, names)


def on_grid(acts: torch.Tensor, grid: Grid) -> torch.Tensor:
    """acts [p*p, d] (rows a*p + b) -> centred float64 [N, d] in grid order."""
    if acts.ndim != 2 or acts.shape[0] != grid.p**2:
        raise HusaiError(
            f"need activations over all {grid.p}^2 inputs ([{grid.p**2}, d]), "
            f"got {list(acts.shape)}"
        )
    X = acts[grid.rows].double()
    return X - X.mean(0)


def grid_power(X: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Per column, the power of the centred X [N, d] (grid order) at each 2-D frequency (u, v) of
    the grid, the mean's (0, 0) set to 0 -> [n, n, d]."""
    n = grid.n
    power = torch.fft.fft2(X.reshape(n, n, -1), dim=(0, 1)).abs().pow(2)
    power[0, 0] = 0
    return power


def frequency_masks(grid: Grid) -> dict[str, torch.Tensor]:
    """[n, n] masks of the 2-D frequencies that are a function of the answer, of x alone, of y alone
    and of the conjugate (module docstring; for even n the shared cell is the answer's)."""
    n = grid.n
    u = torch.arange(n)
    U, V = u[:, None].expand(n, n), u[None, :].expand(n, n)
    nonzero = (U != 0) & (V != 0)
    same, opposite = nonzero & (U == V), nonzero & ((U + V) % n == 0)
    answer, conjugate = (opposite, same) if grid.operation == "sub" else (same, opposite)
    return dict(
        answer=answer, a=(U != 0) & (V == 0), b=(U == 0) & (V != 0), conjugate=conjugate & ~answer
    )


def variance_decomposition(X: torch.Tensor, grid: Grid) -> dict[str, float]:
    """Shares of the centred variance of X [N, d] (grid order) that are a function of the answer,
    of x alone, of y alone, of the conjugate, and the rest (module docstring). They sum to 1."""
    power = grid_power(X, grid).sum(-1)  # [n, n]
    total = float(power.sum())
    if total <= 0:
        raise HusaiError("the activations are constant over the inputs: they carry no information")
    shares = {k: float(power[m].sum()) / total for k, m in frequency_masks(grid).items()}
    shares["rest"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def _unit_functions(index: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """cos(w k i), sin(w k i) over the grid, each scaled to unit norm -> [N, 2] (or [N, 1] when
    k = n/2, where the sine vanishes)."""
    t = 2 * math.pi * k * index.double() / n
    fs = [torch.cos(t)] + ([torch.sin(t)] if 2 * k != n else [])
    return torch.stack([f / f.norm() for f in fs], dim=1)


def _dim(M: torch.Tensor) -> tuple[int, list[float]]:
    s = torch.linalg.svdvals(M)
    return int((s >= REL_DIM * s[0]).sum()) if s.numel() and s[0] > 0 else 0, [float(v) for v in s]


def orthonormal_basis(M: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Orthonormal basis [d, r] of the row space of M [m, d]: the singular directions with singular
    value >= REL_DIM of the largest and >= floor (so that round-off is no direction)."""
    if M.shape[0] == 0:
        return M.new_zeros(M.shape[1], 0)
    _, s, Vh = torch.linalg.svd(M, full_matrices=False)
    keep = (
        (s >= REL_DIM * s[0]) & (s > floor) if s[0] > 0 else torch.zeros_like(s, dtype=torch.bool)
    )
    return Vh[: int(keep.sum())].T


@dataclass
class Plane:
    """One plane: the images [m, d] of its unit functions, an orthonormal basis [d, r] of their
    span."""

    name: str
    images: torch.Tensor
    basis: torch.Tensor
    share: float


def planes(X: torch.Tensor, grid: Grid, freqs: list[int]) -> list[Plane]:
    """Output and input plane of each frequency in freqs (module docstring), in that order."""
    total = float(X.pow(2).sum())
    floor = (PLANE_FLOOR * total) ** 0.5  # a direction carrying < 1e-6 of the variance is round-off
    out = []
    for k in freqs:
        for name, funcs in (
            (f"out {k}", _unit_functions(grid.answer, grid.n, k)),
            (
                f"in {k}",
                torch.cat(
                    [_unit_functions(grid.x, grid.n, k), _unit_functions(grid.y, grid.n, k)], dim=1
                ),
            ),
        ):
            images = funcs.T @ X  # [m, d]
            out.append(
                Plane(
                    name,
                    images,
                    orthonormal_basis(images, floor),
                    float(images.pow(2).sum()) / total,
                )
            )
    return out


def plane_shares(X: torch.Tensor, grid: Grid) -> dict[str, list[float]]:
    """Output- and input-plane variance shares of every frequency 1..n//2 (index k-1)."""
    total = float(X.pow(2).sum())
    outs, ins = [], []
    for k in range(1, grid.n // 2 + 1):
        outs.append(float((_unit_functions(grid.answer, grid.n, k).T @ X).pow(2).sum()) / total)
        both = torch.cat(
            [_unit_functions(grid.x, grid.n, k), _unit_functions(grid.y, grid.n, k)], dim=1
        )
        ins.append(float((both.T @ X).pow(2).sum()) / total)
    return dict(output=outs, input=ins)


def max_cosine(Q1: torch.Tensor, Q2: torch.Tensor) -> float:
    """Largest principal cosine between two subspaces given by orthonormal bases [d, r1],
    [d, r2]."""
    if Q1.shape[1] == 0 or Q2.shape[1] == 0:
        return 0.0
    return float(torch.linalg.svdvals(Q1.T @ Q2)[0].clamp(max=1.0))


def class_centroids(X: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The n answer-class means of the centred X [N, d] -> [n, d] (row i: the inputs whose answer
    index is i; the answer itself for add and sub, its discrete logarithm for mul)."""
    C = torch.zeros(grid.n, X.shape[1], dtype=X.dtype).index_add_(0, grid.answer, X)
    return C / torch.bincount(grid.answer, minlength=grid.n).clamp_min(1).unsqueeze(1).to(X.dtype)


def frequency_purity(
    X: torch.Tensor, grid: Grid, power: torch.Tensor | None = None
) -> torch.Tensor:
    """Share of each column's centred variance in each frequency's 3x3 block {0, k, -k}^2 of the
    grid's 2-D DFT (for add this is husai.model.fourier.frequency_fractions). -> [d, n//2].
    power: grid_power(X, grid) when the caller has it already."""
    n = grid.n
    power = grid_power(X, grid) if power is None else power  # [n, n, d]
    total = power.sum(dim=(0, 1))
    out = []
    for k in range(1, n // 2 + 1):
        idx = torch.tensor(sorted({0, k, (n - k) % n}))
        out.append(power[idx][:, idx].sum(dim=(0, 1)))
    return (torch.stack(out, dim=1) / total.clamp_min(1e-30).unsqueeze(1)) * (
        total > 1e-20
    ).unsqueeze(1)


def key_frequencies_on_grid(
    neuron_acts: torch.Tensor, grid: Grid, share: float = KEY_SHARE
) -> list[int]:
    """Key frequencies from MLP neurons [p*p, d_mlp]: those whose 3x3 blocks hold >= `share` of the
    neurons' summed centred variance (husai.model.fourier.key_frequencies, on the group's own grid,
    so that for (a * b) mod p they are frequencies of the discrete logarithm)."""
    X = on_grid(neuron_acts, grid)
    weights = X.pow(2).sum(0)
    per = (frequency_purity(X, grid) * weights.unsqueeze(1)).sum(0) / weights.sum().clamp_min(1e-30)
    return [k + 1 for k in range(per.numel()) if per[k] >= share]


def model_key_frequencies(model_dir, p: int, operation: str) -> list[int]:
    """A model run's key frequencies: recorded in metrics.json (add, sub), else from its MLP
    neurons."""
    from pathlib import Path

    from husai.io import read_json
    from husai.model.checkpoint import load_model
    from husai.model.data import make_tokens
    from husai.sae.activations import extract

    metrics = Path(model_dir) / "metrics.json"
    keys = read_json(metrics, "model metrics").get("key_frequencies") if metrics.is_file() else None
    if keys is not None and operation != "mul":  # recorded keys use the additive DFT
        return [int(k) for k in keys]
    model, _ = load_model(model_dir)
    return key_frequencies_on_grid(
        extract(model, "blocks.0.mlp.hook_post", make_tokens(p)), group_grid(p, operation)
    )


def pca_ev(X: torch.Tensor, ranks=PCA_RANKS) -> dict[int, float]:
    """Explained variance of the best rank-r reconstruction (PCA) for each r."""
    s2 = torch.linalg.svdvals(X).pow(2)
    return {r: float(s2[:r].sum() / s2.sum()) for r in ranks if r <= X.shape[1]}


@dataclass
class GroundTruth:
    """Everything `ground_truth` measures for one hook; `to_json()` is what the CLI writes."""

    grid: Grid
    key_frequencies: list[int]
    variance: dict
    planes: list[Plane]
    span: torch.Tensor
    span_share: float
    centroids: torch.Tensor
    centroid_ev: float
    pca: dict
    all_planes: dict
    neurons: dict | None = None

    def to_json(self) -> dict:
        labels = [pl.name for pl in self.planes]
        per = {}
        for pl in self.planes:
            dim, sv = _dim(pl.images)
            entry = dict(dim=dim, share=pl.share, singular_values=sv)
            if pl.name.startswith(
                "in"
            ):  # do the a-plane and the b-plane coincide? (all principal cosines ~1)
                m = pl.images.shape[0] // 2
                Qa, Qb = orthonormal_basis(pl.images[:m]), orthonormal_basis(pl.images[m:])
                cos = (
                    torch.linalg.svdvals(Qa.T @ Qb)
                    if Qa.shape[1] and Qb.shape[1]
                    else torch.zeros(1)
                )
                entry["a_b_principal_cosines"] = [float(c) for c in cos.clamp(max=1.0)]
            per[pl.name] = entry
        return dict(
            p=self.grid.p,
            operation=self.grid.operation,
            group_order=self.grid.n,
            n_inputs=int(self.grid.rows.numel()),
            key_frequencies=self.key_frequencies,
            variance=self.variance,
            variance_names=self.grid.names,
            planes=per,
            plane_max_cosines=dict(
                labels=labels,
                matrix=[
                    [max_cosine(p1.basis, p2.basis) for p2 in self.planes] for p1 in self.planes
                ],
            ),
            span=dict(dim=int(self.span.shape[1]), share=self.span_share),
            plane_shares_all_frequencies=self.all_planes,
            atoms=dict(
                answer_centroids=dict(
                    count=int(self.centroids.shape[0]),
                    mean_norm=float(self.centroids.norm(dim=1).mean()),
                ),
                **({"single_frequency_neurons": self.neurons} if self.neurons else {}),
            ),
            baselines=dict(
                centroid_lookup=dict(l0=1, explained_variance=self.centroid_ev),
                pca={str(r): v for r, v in self.pca.items()},
                planes_span=dict(dim=int(self.span.shape[1]), explained_variance=self.span_share),
                planes_functions=sum(pl.share for pl in self.planes),
            ),
        )


def ground_truth(
    acts: torch.Tensor,
    p: int,
    operation: str = "add",
    key_freqs: list[int] | None = None,
    neurons: bool = False,
) -> GroundTruth:
    """The ground truth of one hook from its activations over all p^2 inputs (rows a*p + b).

    key_freqs: the model's key frequencies (husai.model.fourier, from its MLP neurons); without
    them, every frequency whose output or input plane holds >= KEY_SHARE of the variance.
    neurons: the columns are neurons (an mlp.hook_post): also list the single-frequency ones.
    """
    grid = group_grid(p, operation)
    X = on_grid(acts, grid)
    variance = variance_decomposition(X, grid)
    shares = plane_shares(X, grid)
    if key_freqs is None:
        key_freqs = [
            k
            for k in range(1, grid.n // 2 + 1)
            if max(shares["output"][k - 1], shares["input"][k - 1]) >= KEY_SHARE
        ]
    bad = [k for k in key_freqs if not 1 <= k <= grid.n // 2]
    if bad:
        raise HusaiError(f"key frequency {bad[0]} is not one of 1..{grid.n // 2}")
    pls = planes(X, grid, key_freqs)
    # the span of all plane directions (each plane's floored basis), so that every plane lies
    # inside it
    span = (
        orthonormal_basis(torch.cat([pl.basis.T for pl in pls]), 1e-6)
        if pls
        else X.new_zeros(X.shape[1], 0)
    )
    total = float(X.pow(2).sum())
    C = class_centroids(X, grid)
    centroid_ev = 1.0 - float((X - C[grid.answer]).pow(2).sum()) / total
    neuron_info = None
    if neurons:
        purity = frequency_purity(X, grid)
        best, freq = purity.max(dim=1)
        single = best >= SINGLE_FREQUENCY
        clusters = {
            int(k): int((single & (freq + 1 == k)).sum()) for k in torch.unique(freq[single] + 1)
        }
        neuron_info = dict(
            count=int(single.sum()),
            of=int(X.shape[1]),
            clusters=clusters,
            neurons=[
                dict(index=int(j), frequency=int(freq[j]) + 1, purity=float(best[j]))
                for j in torch.nonzero(single).squeeze(1)
            ],
        )
    return GroundTruth(
        grid,
        list(key_freqs),
        variance,
        pls,
        span,
        float((X @ span).pow(2).sum()) / total,
        C,
        centroid_ev,
        pca_ev(X),
        shares,
        neuron_info,
    )
