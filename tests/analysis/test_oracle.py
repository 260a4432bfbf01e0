"""Oracle dictionaries (husai.analysis.oracle) and the optimisation gap
(husai.analysis.optimisation_gap): planted activations whose oracle is exact, the pursuit against
brute force, an SAE started at an exact planted oracle staying there, and the reading's rules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

from husai.analysis.ground_truth import group_grid, on_grid
from husai.analysis.optimisation_gap import (
    convergence,
    gap_stats,
    near_truth,
    reading,
    started_at_truth,
    truth_runs,
    truth_start,
)
from husai.analysis.oracle import (
    best_code,
    code_scores,
    complete_truth,
    neuron_atoms,
    score,
    tiling,
    truth_circles,
)
from husai.sae.config import SAETrainConfig

P = 23


def _planted(d: int = 12, seed: int = 0):
    """Activations over the p^2 grid made of three circles with orthonormal images: the answer's
    circle of k = 2, the input circle of k = 2 (a and b in one plane, as a grokked model has them)
    and the answer's circle of k = 5; radii 3, 1, 2 and an offset. Returns (acts [p^2, d], grid,
    {circle: its 2-D basis})."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(d, 6, generator=g, dtype=torch.float64))[
        0
    ].T  # 6 orthonormal rows
    grid = group_grid(P)
    w = lambda k, i: 2 * math.pi * k * i.double() / P  # noqa: E731
    acts = torch.zeros(P * P, d, dtype=torch.float64)
    rows = grid.rows
    for k, idx, (u, v), r in ((2, grid.answer, Q[0:2], 3.0), (5, grid.answer, Q[4:6], 2.0)):
        acts[rows] += r * (torch.cos(w(k, idx))[:, None] * u + torch.sin(w(k, idx))[:, None] * v)
    for idx in (grid.x, grid.y):
        acts[rows] += 1.0 * (
            torch.cos(w(2, idx))[:, None] * Q[2] + torch.sin(w(2, idx))[:, None] * Q[3]
        )
    return acts + 0.7, grid, {"out 2": Q[0:2], "in 2": Q[2:4], "out 5": Q[4:6]}


def test_the_planted_truth_is_complete_and_found():
    acts, grid, planes = _planted()
    X = on_grid(acts, grid)
    circles = truth_circles(X, grid, [2, 5])
    assert [c.name for c in circles] == [
        "out 2",
        "out 5",
        "in 2",
    ]  # by share: 9/2, 4/2, 2/2 of the variance
    truth = complete_truth(X, circles)
    assert truth["remainder"] < 1e-9 and truth["circles_sum"] == pytest.approx(1.0, abs=1e-9)
    assert truth["circles"]["out 2"] == pytest.approx(9 / 15, abs=1e-6)
    for c in circles:  # each circle's images lie in its planted plane
        inside = c.images @ planes[c.name].T @ planes[c.name]
        torch.testing.assert_close(inside, c.images)


@pytest.mark.parametrize("width", [9, 12, 48])
def test_an_exact_oracle_codes_the_planted_activations_at_two_atoms_a_circle(width):
    """EV 1 at k = 2 x circles (two atoms of a circle code a point in their cone exactly, the input
    circle's sum of an a-point and a b-point included); below that the L0 budget binds."""
    acts, grid, _ = _planted()
    X = on_grid(acts, grid)
    circles = truth_circles(X, grid, [2, 5])
    D, labels = tiling(circles, width, seed=3)
    assert D.shape[0] == (width // 3) * 3 and len(labels) == D.shape[0]
    s = score(X, D, 6)
    assert s["explained_variance"] > 1 - 1e-6 and s["l0"] <= 6
    assert score(X, D, 3)["explained_variance"] < 0.99


def test_the_tiling_puts_evenly_spaced_unit_atoms_on_each_circle_at_a_seeded_phase():
    acts, grid, planes = _planted()
    X = on_grid(acts, grid)
    circles = truth_circles(X, grid, [2, 5])
    D0, lab0 = tiling(circles, 24, seed=0)
    D1, lab1 = tiling(circles, 24, seed=1)
    torch.testing.assert_close(D0.norm(dim=1), torch.ones(24, dtype=torch.float64))
    for name in planes:
        phases = [a["phase"] for a in lab0 if a["circle"] == name]
        assert len(phases) == 8
        gaps = np.diff(phases)
        assert np.allclose(gaps, 2 * math.pi / 8)
        rows = D0[[i for i, a in enumerate(lab0) if a["circle"] == name]]
        torch.testing.assert_close(
            (rows @ planes[name].T).norm(dim=1), torch.ones(8, dtype=torch.float64)
        )
    assert (
        lab0[0]["phase"] != lab1[0]["phase"]
    )  # another seed, another phase: equally true, different
    torch.testing.assert_close(tiling(circles, 24, seed=0)[0], D0)  # the same seed, the same tiling
    with pytest.raises(ValueError, match="cannot tile"):
        tiling(circles, 2, seed=0)


def test_a_line_gets_its_two_atoms_and_the_planes_the_rest():
    """A conjugate component cos(w (a - b)) alone (no sine: even in a - b, as in a grokked model)
    is a line: the tiling gives it exactly +-u, and the rest of the width goes to the planes."""
    acts, grid, planes = _planted()
    u = torch.linalg.qr(torch.randn(12, 7, generator=torch.Generator().manual_seed(9)).double())[0]
    u = u[:, 6] - planes["out 2"].T @ (planes["out 2"] @ u[:, 6])  # off the planted planes
    u = u - sum(planes[n].T @ (planes[n] @ u) for n in ("in 2", "out 5"))
    u = u / u.norm()
    w = 2 * math.pi * 2 * grid.conjugate.double() / P
    acts = acts.clone()
    acts[grid.rows] += 1.5 * torch.cos(w)[:, None] * u
    X = on_grid(acts, grid)
    circles = truth_circles(X, grid, [2, 5])
    line = next(c for c in circles if c.name == "conj 2")
    assert line.is_line and not any(c.is_line for c in circles if c is not line)
    D, labels = tiling(circles, 26, seed=4)
    rows = D[[i for i, a in enumerate(labels) if a["circle"] == "conj 2"]]
    torch.testing.assert_close(rows, torch.stack([u, -u]) * torch.sign(rows[0] @ u))
    counts = {n: sum(a["circle"] == n for a in labels) for n in planes}
    assert counts == {"out 2": 8, "in 2": 8, "out 5": 8}  # (26 - 2) // 3 planes
    assert D.shape[0] == 26


def _brute_force(x: np.ndarray, D: np.ndarray, k: int) -> float:
    """The smallest squared residual of x over every support of at most k atoms, by NNLS on each."""
    best = float(x @ x)
    for t in range(1, k + 1):
        for S in itertools.combinations(range(D.shape[0]), t):
            best = min(best, nnls(D[list(S)].T, x)[1] ** 2)
    return best


def test_the_pursuit_against_brute_force():
    """Random unit atoms (7 in 10 dims), k = 2: the pursuit never does better than the best support
    (its code obeys the constraints), finds it on inputs that are exactly 2-sparse and non-negative,
    and stays within a few percent of it on random inputs."""
    g = torch.Generator().manual_seed(0)
    D = torch.randn(7, 10, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True)
    planted = torch.zeros(20, 7, dtype=torch.float64)
    for n in range(20):
        S = torch.randperm(7, generator=g)[:2]
        planted[n, S] = 1 + torch.rand(2, generator=g, dtype=torch.float64)
    X = torch.cat([planted @ D, torch.randn(30, 10, generator=g, dtype=torch.float64)])
    Z = best_code(X, D, 2)
    assert (Z >= 0).all() and ((Z > 0).sum(1) <= 2).all()
    res = (X - Z @ D).pow(2).sum(1)
    brute = torch.tensor([_brute_force(x.numpy(), D.numpy(), 2) for x in X], dtype=torch.float64)
    assert (res >= brute - 1e-9).all()
    assert res[:20].max() < 1e-6  # the planted codes are found exactly
    assert float(res[20:].sum()) <= 1.05 * float(brute[20:].sum())


def test_with_every_atom_allowed_the_code_is_the_nnls_solution():
    g = torch.Generator().manual_seed(1)
    D = torch.randn(6, 8, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True)
    X = torch.randn(25, 8, generator=g, dtype=torch.float64)
    Z = best_code(X, D, 6, final_sweeps=500)
    for x, z in zip(X, Z):
        ref, _ = nnls(D.numpy().T, x.numpy())
        np.testing.assert_allclose(z.numpy(), ref, atol=1e-5)
    s = code_scores(X - X.mean(0), D, best_code(X - X.mean(0), D, 6))
    assert 0 < s["explained_variance"] <= 1 and s["atoms"] == 6


def test_an_sae_started_at_an_exact_planted_oracle_stays_there():
    """Inputs that are 2 of 16 atoms (8 orthonormal directions and their negatives, so the data are
    centred, as the truth's circles are) with weights in [1, 2]: TopK (k 2) started at those atoms
    keeps them (cosine > 0.99 after 3 epochs), reconstructs nearly everything, and every live row is
    near an atom."""
    g = torch.Generator().manual_seed(2)
    half = torch.linalg.qr(torch.randn(16, 8, generator=g))[0].T  # [8, 16]
    atoms = torch.cat([half, -half])
    codes = torch.zeros(4000, 16)
    for n in range(4000):
        dirs = torch.randperm(8, generator=g)[:2] + 8 * torch.randint(2, (2,), generator=g)
        codes[n, dirs] = 1 + torch.rand(2, generator=g)
    acts = codes @ atoms
    cfg = SAETrainConfig(architecture="topk", latents=16, k=2, epochs=3, batch_size=256, lr=1e-3)
    out = started_at_truth(
        acts, cfg, [1, 2], dict(W_dec=torch.stack([atoms, atoms]), b_dec=acts.mean(0))
    )
    assert min(out["min_cosine_to_start"]) > 0.99
    assert min(out["explained_variance"]) > 0.99
    assert min(out["near_truth"]) == 1.0


def test_near_truth_counts_live_rows_within_the_cosine():
    atoms = torch.eye(3, dtype=torch.float64)
    W = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0, 0, -2.0], [0, 3, 0.1]], dtype=torch.float64)
    assert near_truth(W, atoms) == 0.5  # rows 0 and 3; a row opposite to an atom is not near it
    assert near_truth(W, atoms, torch.tensor([True, True, False, False])) == 0.5


@pytest.mark.parametrize(
    "oracle,sae,expect",
    [
        ([0.970, 0.971, 0.969], [0.930, 0.931, 0.928], "optimisation"),
        ([0.930, 0.931, 0.928], [0.970, 0.971, 0.969], "objective"),
        ([0.950, 0.960, 0.940], [0.951, 0.939, 0.962], "neither"),
        ([0.990], [0.900], "neither"),  # one seed: no interval, no claim
    ],
)
def test_the_reading_rules(oracle, sae, expect):
    gap = gap_stats(oracle, sae)
    assert gap["per_seed"] == pytest.approx([o - s for o, s in zip(oracle, sae)])
    lo, hi = gap["ci"]
    assert lo <= gap["mean"] <= hi
    assert reading(gap) == expect


def test_the_gap_interval_is_the_t_interval():
    gap = gap_stats([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) x sd / sqrt(n)
    assert gap["mean"] == pytest.approx(2.0) and gap["ci"] == pytest.approx([2 - half, 2 + half])


def test_the_neuron_oracle_is_the_largest_variance_coordinates():
    X = torch.zeros(50, 6, dtype=torch.float64)
    X[:, 4], X[:, 1], X[:, 2] = torch.linspace(-3, 3, 50), torch.linspace(-2, 2, 50), 0.1
    D = neuron_atoms(X - X.mean(0), 2)
    torch.testing.assert_close(D, torch.eye(6, dtype=torch.float64)[[1, 4]])
    assert neuron_atoms(X, 10).shape == (6, 6)


def test_an_l1_family_starts_each_atom_firing_on_its_arc():
    """truth_start: for ReLU, b_enc = -radius x cos(phase step), so that on the planted circle of
    radius 3 (the answer's k = 2 circle, 8 atoms) an atom's pre-activation is > 0 exactly within one
    phase step of it; TopK starts at b_enc 0."""
    acts, grid, _ = _planted()
    X = on_grid(acts, grid)
    circles = truth_circles(X, grid, [2, 5])
    tiled = [tiling(circles, 24, seed=0)]
    relu = truth_start(acts, SAETrainConfig(architecture="relu", latents=24), tiled)
    labels = tiled[0][1]
    first = [i for i, a in enumerate(labels) if a["circle"] == "out 2"]
    assert all(labels[i]["radius"] == pytest.approx(3.0) for i in first)
    torch.testing.assert_close(
        relu["b_enc"][0, first],
        torch.full((8,), -3.0 * math.cos(2 * math.pi / 8)),
        check_dtype=False,
    )
    assert "b_enc" not in truth_start(
        acts, SAETrainConfig(architecture="topk", latents=24, k=4), tiled
    )


def test_convergence_is_the_last_epochs_ev_gain():
    rows = [dict(ev=[0.90, 0.92]), dict(ev=[0.93, 0.94]), dict(ev=[0.9305, 0.9408])]
    c = convergence(rows)
    assert c["last_epoch_ev_gain"] == pytest.approx(0.00065) and c["converged"]
    assert (
        not convergence(rows[:2])["converged"]
        and convergence(rows[:1]) is None
        and convergence(None) is None
    )


def test_the_two_runs_from_the_truth_in_one_pass_are_the_runs_alone():
    """truth_runs trains the frozen-decoder and the free run side by side: each equals its run
    alone."""
    acts, grid, _ = _planted()
    X = on_grid(acts, grid)
    tiled = [tiling(truth_circles(X, grid, [2, 5]), 12, seed=s) for s in (1, 2)]
    cfg = SAETrainConfig(architecture="topk", latents=16, k=4, epochs=2, batch_size=128)
    start = truth_start(acts, cfg, tiled)
    enc, begun = truth_runs(acts, cfg, [1, 2], start)
    alone_enc, _ = truth_runs(acts, cfg, [1, 2], start, started=False)
    _, alone_begun = truth_runs(acts, cfg, [1, 2], start, encoder=False)
    assert enc["explained_variance"] == pytest.approx(alone_enc["explained_variance"], abs=1e-6)
    assert begun["explained_variance"] == pytest.approx(alone_begun["explained_variance"], abs=1e-6)
    assert begun["cosine_to_start"] == pytest.approx(alone_begun["cosine_to_start"], abs=1e-6)
    assert enc["explained_variance"] != pytest.approx(begun["explained_variance"], abs=1e-4)
