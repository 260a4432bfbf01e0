"""Fourier validation of SAE latents: planted features, chance level, coverage, weight-space
view."""

import math

import pytest
import torch

from husai.analysis.latent_fourier import (
    chance_purity,
    compute_fourier_overlap,
    decoder_frequency_fractions,
    fourier_report,
    frequency_subspaces,
    get_fourier_basis,
    latent_frequencies,
)
from husai.model.fourier import frequency_fractions

torch.set_num_threads(1)


def grid(p):
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    return a, b


def planted(p, specs):
    """Columns built from one frequency each: (k, form, phase) with form in a, b, sum, prod."""
    a, b = grid(p)
    cols = []
    for k, form, phi in specs:
        w = 2 * math.pi * k / p
        cols.append(
            {
                "a": torch.cos(w * a + phi),
                "b": torch.cos(w * b + phi),
                "sum": torch.cos(w * (a + b) + phi),
                "prod": torch.cos(w * a + phi) * torch.sin(w * b),
            }[form]
        )
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("p", [13, 113])
def test_planted_cosines_have_purity_one_and_their_frequency(p):
    specs = [
        (k, form, phi)
        for k in (1, 2, (p - 1) // 2)
        for form in ("a", "b", "sum", "prod")
        for phi in (0.0, 0.7, 2.5)
    ]
    purity, freq, live = latent_frequencies(planted(p, specs), p)
    assert torch.allclose(purity, torch.ones_like(purity), atol=1e-9)
    assert freq.tolist() == [k for k, _, _ in specs]
    assert bool(live.all())


def test_purity_of_a_known_mixture():
    """f = sqrt(0.7) g_3 + sqrt(0.3) g_5 with orthogonal unit-variance parts: purity 0.7 at
    frequency 3."""
    p = 31
    X = planted(p, [(3, "a", 0.3), (5, "b", 1.1)])
    X = X / X.std(dim=0)
    f = (math.sqrt(0.7) * X[:, 0] + math.sqrt(0.3) * X[:, 1]).unsqueeze(1)
    purity, freq, _ = latent_frequencies(f, p)
    assert purity.item() == pytest.approx(0.7, abs=1e-9)
    assert freq.item() == 3


def test_chance_purity_matches_brute_force_on_the_grid():
    """The chi-square derivation agrees with purity computed on real random grids (small p, many
    draws)."""
    p = 7
    g = torch.Generator().manual_seed(0)
    X = torch.randn(p * p, 20000, generator=g, dtype=torch.float64)
    brute = frequency_fractions(X, p).max(dim=1).values.mean().item()
    assert chance_purity(p) == pytest.approx(brute, rel=0.02)


def test_random_latents_score_near_chance():
    p = 113
    g = torch.Generator().manual_seed(1)
    X = torch.relu(
        torch.randn(p * p, 400, generator=g, dtype=torch.float64)
    )  # ReLU noise: i.i.d., still chance
    ov = compute_fourier_overlap(X, p)
    c = chance_purity(p)
    assert (
        0.0012 < c < 0.0020
    )  # derived: mean block fraction 8/(p^2-1) = 6.3e-4, max of 56 ~ 2.5x that
    assert ov == pytest.approx(c, rel=0.05)


def test_dead_latents_do_not_count():
    p = 13
    X = planted(p, [(2, "a", 0.0), (4, "sum", 0.0)])
    X0 = torch.cat([X, torch.zeros(p * p, 3, dtype=torch.float64)], dim=1)
    assert compute_fourier_overlap(X0, p) == pytest.approx(1.0)
    _, freq, live = latent_frequencies(X0, p)
    assert live.tolist() == [True, True, False, False, False]
    assert freq.tolist()[2:] == [0, 0, 0]
    assert math.isnan(compute_fourier_overlap(torch.zeros(p * p, 2), p))


def test_report_coverage_and_non_key_frequencies():
    p = 31
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(p * p, 2, generator=g, dtype=torch.float64)
    X = torch.cat([planted(p, [(3, "a", 0.0), (3, "sum", 1.0), (7, "b", 0.0)]), noise], dim=1)
    rep = fourier_report(X, p, key_freqs=[5, 3])
    assert rep["key_frequencies"] == [3, 5]
    assert rep["covered"] == [3] and rep["missing"] == [5] and rep["coverage"] == 0.5
    assert rep["pure_per_frequency"] == {3: 2, 7: 1}
    assert rep["non_key_pure"] == {7: 1}
    assert rep["frac_pure"] == pytest.approx(3 / 5)
    assert rep["n_live"] == 5


def test_weight_space_view_on_a_synthetic_residual():
    """x(a, b) = u1 cos(w3 a) + u2 sin(w3 a) + u3 cos(w5 b): frequency 3 lives in span(u1, u2)."""
    p, d = 31, 16
    a, b = grid(p)
    U = torch.linalg.qr(
        torch.randn(d, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    )[0].T
    w3, w5 = 2 * math.pi * 3 / p, 2 * math.pi * 5 / p
    x = (
        torch.cos(w3 * a)[:, None] * U[0]
        + torch.sin(w3 * a)[:, None] * U[1]
        + torch.cos(w5 * b)[:, None] * U[2]
    )
    subs = frequency_subspaces(x, p, [3, 5])
    assert subs[3].shape == (d, 2) and subs[5].shape == (d, 1)
    rows = torch.stack([U[0], (U[0] + U[1]) / 2, U[2], U[0] + U[2]])
    fr, union = decoder_frequency_fractions(rows, subs)
    expect = torch.tensor([[1, 0], [1, 0], [0, 1], [0.5, 0.5]], dtype=torch.float64)
    assert torch.allclose(fr, expect, atol=1e-9)
    assert torch.allclose(union, torch.ones(4, dtype=torch.float64), atol=1e-9)
    # a random row holds about dim/d of its norm in a subspace
    R = torch.randn(4000, d, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    fr, _ = decoder_frequency_fractions(R, subs)
    assert fr.mean(dim=0).tolist() == pytest.approx([2 / d, 1 / d], rel=0.1)


def test_report_weight_space_fields():
    p, d = 13, 8
    a, _ = grid(p)
    w = 2 * math.pi * 2 / p
    u = torch.zeros(d, dtype=torch.float64)
    u[0] = 1
    x = torch.cos(w * a)[:, None] * u
    lat = planted(p, [(2, "a", 0.0)])
    rep = fourier_report(lat, p, [2], W_dec=u[None], resid_acts=x)
    ws = rep["weight_space"]["per_frequency"][2]
    assert (
        ws["dim"] == 1
        and ws["mean_frac_assigned"] == pytest.approx(1.0)
        and ws["null"] == pytest.approx(1 / d)
    )


def test_get_fourier_basis_is_orthonormal():
    F = get_fourier_basis(113)
    assert torch.allclose(F @ F.T, torch.eye(113, dtype=F.dtype), atol=1e-10)


def test_sparse_bump_latent_is_impure_but_weight_assigned():
    """A TopK-style latent firing on a narrow band of phase of frequency 3 spreads its activation
    over harmonics (purity far below 0.85), yet its decoder row lies in frequency 3's subspace: the
    weight-space view assigns it to 3. A row split over several subspaces stays unassigned."""
    p, d = 31, 16
    a, b = grid(p)
    U = torch.linalg.qr(
        torch.randn(d, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    )[0].T
    w3, w5 = 2 * math.pi * 3 / p, 2 * math.pi * 5 / p
    x = (
        torch.cos(w3 * a)[:, None] * U[0]
        + torch.sin(w3 * a)[:, None] * U[1]
        + torch.cos(w5 * b)[:, None] * U[2]
    )
    bump = torch.relu(torch.cos(w3 * a) - 0.9)[:, None]
    lat = torch.cat([bump, bump], dim=1)
    W_dec = torch.stack([U[0], U[0] + U[2] + U[3]])  # second: 1/3 in each of k=3, k=5 and elsewhere
    rep = fourier_report(lat, p, [3, 5], W_dec=W_dec, resid_acts=x)
    assert max(rep["latents"]["purity"]) < 0.6
    assert rep["latents"]["weight_frequency"] == [3, 0]
    assert rep["latents"]["weight_purity"] == pytest.approx([1.0, 1 / 3])
    assert rep["weight_space"]["frac_weight_assigned"] == 0.5
    assert rep["weight_space"]["per_frequency"][3]["n_weight_assigned"] == 1
    assert rep["weight_space"]["covered_by_weights"] == [3] and rep["covered"] == []
