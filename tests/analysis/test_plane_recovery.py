"""Plane recovery against the complete truth (husai.analysis.plane_recovery): planted rows whose
coverage, evenness and membership are computed by hand, and the oracle tiling against the rotated
reference on a planted grid's complete truth."""

from __future__ import annotations

import math

import pytest
import torch

from husai.analysis.data_span import data_span
from husai.analysis.ground_truth import group_grid, on_grid
from husai.analysis.oracle import Circle, circle_span, tiling, truth_circles
from husai.analysis.plane_recovery import (
    coverage,
    evenness,
    plane_recovery,
    plane_scores,
    rotated,
)

D = 8
E = torch.eye(D, dtype=torch.float64)


def _circles(radius_sin: float = 1.0) -> list[Circle]:
    """Three circles on orthogonal planes: A on e0, e1 (its sine image radius_sin times the
    cosine's: an ellipse when not 1) with 0.6 of the variance, B on e2, e3 and C on e6, e7 with 0.2
    each."""
    a = Circle("out 1", 1, torch.stack([3 * E[0], 3 * radius_sin * E[1]]), 0.6, 100)
    b = Circle("in 1", 1, torch.stack([E[2], E[3]]) * math.sqrt(3), 0.2, 100)
    c = Circle("conj 1", 1, torch.stack([E[6], E[7]]) * math.sqrt(3), 0.2, 100)
    return [a, b, c]


def _on_a(theta: torch.Tensor) -> torch.Tensor:
    """Unit rows at angles theta [m] in circle A's plane -> [m, D]."""
    return torch.cos(theta)[:, None] * E[0] + torch.sin(theta)[:, None] * E[1]


@pytest.mark.parametrize("m", [3, 4, 8])
def test_evenly_spaced_atoms_cover_a_plane_at_cos_pi_over_m_and_tile_it_evenly(m):
    circles = _circles()
    rows = _on_a(0.3 + 2 * math.pi * torch.arange(m, dtype=torch.float64) / m)
    out = plane_scores(rows, circles, circle_span(circles))
    a, b = out["planes"]["out 1"], out["planes"]["in 1"]
    assert a["latents"] == m and b["latents"] == 0
    assert a["coverage"] == pytest.approx(math.cos(math.pi / m), abs=1e-9)
    assert a["evenness"] == pytest.approx(1.0, abs=1e-9)
    assert b["coverage"] == 0.0 and b["evenness"] == 0.0
    s = out["summary"]  # variance-weighted: plane A holds 0.6 of the circles' variance
    assert s["coverage"] == pytest.approx(0.6 * math.cos(math.pi / m), abs=1e-9)
    assert s["evenness"] == pytest.approx(0.6, abs=1e-9)
    assert s["planes_tiled"] == 1 and s["in_plane_share"] == 1.0


def test_atoms_at_one_phase_score_evenness_0_and_leave_the_opposite_direction_uncovered():
    circles = _circles()
    rows = _on_a(torch.full((5,), 1.1, dtype=torch.float64)) * torch.arange(1, 6)[:, None]
    a = plane_scores(rows, circles, circle_span(circles))["planes"]["out 1"]
    assert a["latents"] == 5
    assert a["coverage"] == 0.0  # the direction at 1.1 + pi has every latent at cosine -1
    assert a["evenness"] == 0.0


def test_coverage_and_evenness_by_hand_on_uneven_phases():
    # three latents at 0, 90, 180 degrees: the largest gap is 180 degrees, so the direction at 270
    # has its nearest latents at 90 degrees (coverage 0); evenness 1 - (pi - 2pi/3) / (2pi - 2pi/3)
    theta = torch.tensor([0.0, math.pi / 2, math.pi], dtype=torch.float64)
    assert coverage(torch.stack([theta.cos(), theta.sin()], 1)) == pytest.approx(0.0, abs=1e-12)
    assert evenness(theta) == pytest.approx(0.75)
    # 0, 100, 220 degrees: largest gap 140 degrees, coverage cos(70 degrees)
    theta = torch.tensor([0.0, 100.0, 220.0], dtype=torch.float64) * math.pi / 180
    assert coverage(torch.stack([theta.cos(), theta.sin()], 1)) == pytest.approx(
        math.cos(70 * math.pi / 180)
    )
    assert evenness(theta) == pytest.approx(1 - (140 - 120) / (360 - 120))
    assert coverage(torch.zeros(0, 2)) == 0.0 and evenness(theta[:1]) == 0.0


def test_rows_mostly_out_of_a_plane_are_not_counted_in_it():
    circles = _circles()
    rows = torch.stack(
        [
            E[0],  # in A
            math.sqrt(0.4) * E[1] + math.sqrt(0.6) * E[4],  # 0.4 of it in A, the rest off the truth
            math.sqrt(0.4) * E[1] + math.sqrt(0.6) * E[2],  # 0.4 in A, 0.6 in B: counts in B
            math.sqrt(0.4) * E[0] + math.sqrt(0.3) * E[2] + math.sqrt(0.3) * E[6],  # in none
            E[5],  # off the truth's span: nothing of it is visible to the truth
        ]
    )
    out = plane_scores(rows, circles, circle_span(circles))
    # the truth's metric projects into the span first (as recovery does): row 1 is then all in A
    assert out["planes"]["out 1"]["latents"] == 2
    assert out["planes"]["in 1"]["latents"] == 1
    assert out["planes"]["in 1"]["in_plane"] == pytest.approx(0.6)
    assert out["summary"]["in_plane_share"] == pytest.approx(3 / 5)


def test_on_an_ellipse_evenness_follows_the_phase_and_coverage_the_directions():
    """Images 3 e0 and 1.5 e1: atoms at phases pi/4 + j pi/2 point at atan(1/2) and its mirror
    images, so their directions leave gaps of 2 atan(1/2) and pi - 2 atan(1/2): coverage
    cos(pi/2 - atan(1/2)) = 1/sqrt(5), while their phases are exactly a quarter turn apart."""
    circles = _circles(radius_sin=0.5)
    theta = math.pi / 4 + math.pi / 2 * torch.arange(4, dtype=torch.float64)
    atoms = circles[0].point(theta)
    a = plane_scores(atoms, circles, circle_span(circles))["planes"]["out 1"]
    assert a["coverage"] == pytest.approx(1 / math.sqrt(5))
    assert a["evenness"] == pytest.approx(1.0)


def test_a_circle_whose_sine_image_vanishes_is_a_line_covered_from_both_sides():
    """The (a - b) circle of a grokked model is even in a - b: its sine image is ~0 and its plane a
    line. Rows at +-e4 cover it (coverage 1, balanced sides: evenness 1); rows on one side leave
    -e4 uncovered; a row along the vanishing sine direction e5 is not in it."""
    line = Circle("conj 1", 1, torch.stack([2 * E[4], 0.01 * E[5]]), 0.1, 100)
    circles = _circles()[:2] + [line]
    span = circle_span(circles)
    both = plane_scores(torch.stack([E[4], -E[4], 2 * E[4], E[5]]), circles, span)
    c = both["planes"]["conj 1"]
    assert c["dim"] == 1 and c["latents"] == 3
    assert c["coverage"] == 1.0 and c["evenness"] == 1.0  # 2 on one side, 1 on the other: 1 / 1
    one = plane_scores(torch.stack([E[4], 3 * E[4]]), circles, span)["planes"]["conj 1"]
    assert one["coverage"] == 0.0 and one["evenness"] == 0.0
    # tiled by phase, a line's atoms land on its two directions, half on each side
    atoms = line.point(0.1 + 2 * math.pi * torch.arange(6, dtype=torch.float64) / 6)
    tiled = plane_scores(atoms, circles, span)["planes"]["conj 1"]
    assert tiled["latents"] == 6 and tiled["coverage"] == 1.0 and tiled["evenness"] == 1.0


def test_the_rotated_reference_keeps_the_rows_geometry_in_the_data_span():
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(D, 5, generator=g, dtype=torch.float64))[0]
    rows = torch.randn(7, 5, generator=g, dtype=torch.float64) @ basis.T  # in the span
    R0, R0b, R1 = rotated(rows, basis, 0), rotated(rows, basis, 0), rotated(rows, basis, 1)
    torch.testing.assert_close(R0 @ R0.T, rows @ rows.T)  # norms and angles kept
    torch.testing.assert_close(R0 @ basis @ basis.T, R0)  # still in the span
    torch.testing.assert_close(R0, R0b)  # seeded
    assert (R0 - R1).abs().max() > 0.1 and (R0 - rows).abs().max() > 0.1


P = 23


def _planted_acts(d: int = 12) -> torch.Tensor:
    """The p^2 grid's activations built from cos/sin waves: the answer's circle of k = 2 (radius 3),
    its input circle (a and b on one pair of directions, radius 1) and the answer's circle of k = 5
    (radius 2), on orthonormal directions, plus an offset -> [p^2, d]."""
    Q = torch.linalg.qr(
        torch.randn(d, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )[0].T
    grid = group_grid(P)
    w = lambda k, i: 2 * math.pi * k * i.double() / P  # noqa: E731
    acts = torch.zeros(P * P, d, dtype=torch.float64)
    for k, idx, (u, v), r in ((2, grid.answer, Q[0:2], 3.0), (5, grid.answer, Q[4:6], 2.0)):
        wave = torch.cos(w(k, idx))[:, None] * u + torch.sin(w(k, idx))[:, None] * v
        acts[grid.rows] += r * wave
    for idx in (grid.x, grid.y):
        wave = torch.cos(w(2, idx))[:, None] * Q[2] + torch.sin(w(2, idx))[:, None] * Q[3]
        acts[grid.rows] += wave
    return acts + 0.7


def test_the_oracle_tiling_is_the_ceiling_and_beats_the_rotated_reference_on_a_planted_truth():
    acts = _planted_acts()
    grid = group_grid(P)
    circles = truth_circles(on_grid(acts, grid), grid, [2, 5])
    assert len(circles) == 3
    atoms, _ = tiling(circles, 12, seed=3)  # 4 atoms a circle; the planted circles are round
    basis = data_span(acts).basis
    out = plane_recovery(atoms, circles, basis, oracle=atoms, draws=4)
    for s in (out["summary"], out["oracle"]):
        assert s["coverage"] == pytest.approx(math.cos(math.pi / 4), abs=1e-9)
        assert s["evenness"] == pytest.approx(1.0, abs=1e-9)
        assert s["planes_tiled"] == 3 and s["in_plane_share"] == 1.0
    ref = out["reference"]
    assert len(ref["draws"]) == 4
    assert all(r["coverage"] <= out["oracle"]["coverage"] for r in ref["draws"])
    assert ref["coverage"] < out["oracle"]["coverage"] - 0.1
    assert ref["planes_tiled"] < 3
    for name, entry in out["planes"].items():
        assert entry["oracle"]["latents"] == 4 and entry["sae"]["latents"] == 4
        assert entry["share"] == next(c.share for c in circles if c.name == name)


def test_results_take_each_seed_slots_plane_recovery():
    from husai.study.results import plane_columns

    acts = _planted_acts()
    grid = group_grid(P)
    circles = truth_circles(on_grid(acts, grid), grid, [2, 5])
    atoms, _ = tiling(circles, 12, seed=3)
    basis = data_span(acts).basis
    one = plane_recovery(atoms[:4], circles, basis, oracle=atoms, draws=2)  # one plane, 4 atoms
    full = plane_recovery(atoms, circles, basis, oracle=atoms, draws=2)
    oracle = dict(plane_recovery=[full, one], started=dict(plane_recovery=[one, full]))
    cols = plane_columns(oracle, 1)
    share = max(c.share for c in circles) / sum(c.share for c in circles)
    assert cols["plane_coverage"] == pytest.approx(share * math.cos(math.pi / 4))
    assert cols["plane_coverage_oracle"] == pytest.approx(math.cos(math.pi / 4))
    assert cols["planes_tiled"] == 1 and cols["planes_tiled_oracle"] == 3
    assert cols["truth_planes"] == 3 and cols["in_plane_share"] == 1.0
    assert cols["started_plane_coverage"] == pytest.approx(math.cos(math.pi / 4))
    assert plane_columns({}, 0)["plane_coverage"] is None
