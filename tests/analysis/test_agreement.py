"""Seed agreement in the data metric (husai.analysis.agreement, data_span): basis invariance,
hand-computed cases, and slow references for the bootstrap and the sparse correlation."""

import itertools
import math

import numpy as np
import pytest
import torch

from husai.analysis.agreement import (
    bootstrap_ci,
    correlation,
    covered_classes,
    pair_agreement,
    seed_agreement,
    seed_view,
    summarise,
)
from husai.analysis.data_span import data_span, shift_map, shift_permutation
from husai.analysis.measures import shifted_view


def _acts(n=400, d=12, r=5, seed=0):
    """Low-rank activations: r directions of decreasing variance in R^d, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:, :r]
    scales = torch.linspace(3.0, 1.0, r, dtype=torch.float64)
    return (
        torch.randn(n, r, generator=g, dtype=torch.float64) * scales
    ) @ basis.T + 1e-4 * torch.randn(n, d, generator=g, dtype=torch.float64)


def _dict(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _codes(X, W_enc_T):
    return torch.relu(X @ W_enc_T.T)


def test_data_span_holds_the_requested_variance():
    X = _acts()
    span = data_span(X, 0.999)
    assert span.basis.shape == (12, 5)
    assert torch.allclose(span.basis.T @ span.basis, torch.eye(5, dtype=torch.float64), atol=1e-10)
    Xc = X - X.mean(0)
    assert span.share == pytest.approx(float((Xc @ span.basis).pow(2).sum() / Xc.pow(2).sum()))
    assert span.share >= 0.999
    assert span.off_span(span.basis.T).abs().max() < 1e-12  # the basis lies in the span
    with pytest.raises(ValueError, match="constant"):
        data_span(torch.ones(10, 3))


def test_every_level_is_unchanged_by_a_rotation_of_the_activations():
    """The data metric is basis-free: rotate the activations AND every dictionary by the same
    orthogonal R and each number is the same; the raw decoder cosine is unchanged too here, but
    adding off-span components (what Adam does per seed) changes the raw one and not ours."""
    X = _acts()
    R = torch.linalg.qr(_dict(12, 12, 5))[0]
    decs = [_dict(20, 12, s) for s in (1, 2, 3)]
    encs = [_dict(20, 12, s + 10) for s in (1, 2, 3)]

    def levels(X, decs, encs):
        span = data_span(X)
        views = [
            seed_view(f"s{i}", D, E, span, _codes(X, E)) for i, (D, E) in enumerate(zip(decs, encs))
        ]
        return seed_agreement(views)["levels"]

    a = levels(X, decs, encs)
    b = levels(X @ R, [D @ R for D in decs], [E @ R for E in encs])
    for m in a:
        assert b[m]["value"] == pytest.approx(a[m]["value"], abs=1e-9), m
        for k in a[m]["nulls"]:
            assert b[m]["nulls"][k]["value"] == pytest.approx(
                a[m]["nulls"][k]["value"], abs=1e-9
            ), (m, k)
    # off-span drift: add to each decoder a different component outside the data span
    span = data_span(X)
    P_off = torch.eye(12, dtype=torch.float64) - span.basis @ span.basis.T
    drifted = [D + 3 * _dict(20, 12, 50 + i) @ P_off for i, D in enumerate(decs)]
    c = levels(X, drifted, encs)
    assert c["pw_mcc_dec"]["value"] == pytest.approx(a["pw_mcc_dec"]["value"], abs=1e-12)
    from husai.analysis.stability import pw_mcc

    assert (
        abs(pw_mcc(drifted[0], drifted[1]) - pw_mcc(decs[0], decs[1])) > 0.05
    )  # the raw figure moves


def test_dead_latents_do_not_count():
    X = _acts()
    span = data_span(X)
    D, E = _dict(20, 12, 1), _dict(20, 12, 2)
    z = _codes(X, E)
    z[:, :5] = 0  # five latents never fire
    v = seed_view("a", D, E, span, z)
    assert v.n == 15 and list(v.live) == list(range(5, 20))
    full = seed_view("b", D[5:], E[5:], span, z[:, 5:])
    m1, _ = pair_agreement(v, seed_view("c", D, E, span, z))
    m2, _ = pair_agreement(full, full)
    assert m1 == pytest.approx(m2)


def test_identical_and_permuted_seeds_agree_fully():
    X = _acts()
    span = data_span(X)
    D, E = _dict(16, 12, 1), _dict(16, 12, 2)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    a = seed_view("a", D, E, span, _codes(X, E))
    b = seed_view("b", D[perm], E[perm], span, _codes(X, E[perm]))
    m, best = pair_agreement(a, b)
    for k in (
        "pw_mcc_dec",
        "pw_mcc_enc",
        "mean_max_abs_cos_dec",
        "shared_fraction",
        "reappearance",
        "act_mcc",
    ):
        assert m[k] == pytest.approx(1.0), k
    assert torch.allclose(best["A"]["best_cos"], torch.ones(16, dtype=torch.float64))


def test_sparse_correlation_matches_numpy():
    g = torch.Generator().manual_seed(0)
    A = torch.relu(torch.randn(300, 7, generator=g, dtype=torch.float64) - 1)
    B = torch.relu(torch.randn(300, 5, generator=g, dtype=torch.float64) - 0.5)
    ref = np.corrcoef(A.numpy().T, B.numpy().T)[:7, 7:]
    assert np.allclose(correlation(A, B).numpy(), ref, atol=1e-10)


def _bootstrap_slow(M, n_boot, seed):
    """The definition, one draw at a time."""
    rng = np.random.default_rng(seed)
    N = M.shape[0]
    idx = rng.integers(0, N, size=(n_boot, N))
    means = []
    for draw in idx:
        # each unordered pair of positions once, pairs of the same seed dropped
        vals = [
            M[draw[a], draw[b]]
            for a, b in itertools.combinations(range(N), 2)
            if draw[a] != draw[b]
        ]
        if vals:
            means.append(np.mean(vals))
    return list(np.quantile(means, [0.025, 0.975]))


def test_bootstrap_ci_matches_the_slow_definition():
    g = np.random.default_rng(3)
    M = g.uniform(0.5, 0.9, size=(5, 5))
    M = (M + M.T) / 2
    np.fill_diagonal(M, 1)
    assert bootstrap_ci(M, 500, seed=7) == pytest.approx(_bootstrap_slow(M, 500, 7))
    lo, hi = bootstrap_ci(M)
    v = M[np.triu_indices(5, 1)]
    assert v.min() <= lo <= v.mean() <= hi <= v.max()
    C = np.full((4, 4), 0.6)
    assert bootstrap_ci(C) == pytest.approx([0.6, 0.6])


def test_summarise_pairs_the_effect_with_the_null():
    M = np.array([[1, 0.8, 0.7], [0.8, 1, 0.9], [0.7, 0.9, 1]])
    Nl = np.array([[1, 0.5, 0.6], [0.5, 1, 0.4], [0.6, 0.4, 1]])
    s = summarise(M, {"symmetry": Nl, "isotropic": Nl - 0.2}, fitting=("symmetry", "isotropic"))
    assert s["value"] == pytest.approx(0.8) and s["nulls"]["symmetry"]["value"] == pytest.approx(
        0.5
    )
    assert s["nulls"]["symmetry"]["effect"] == pytest.approx(0.3)
    assert s["fitting"]["value"] == pytest.approx(0.5)  # the stricter null, pair by pair
    lo, hi = s["fitting"]["effect_ci"]
    assert 0.1 - 1e-12 <= lo <= 0.3 <= hi <= 0.5 + 1e-12  # the pair effects are 0.3, 0.1 and 0.5


def _fourier_grid(p, k):
    """y(a, b) = (cos, sin) of w k (a + b): one output plane, exactly shift-covariant."""
    a = torch.arange(p).repeat_interleave(p).double()
    b = torch.arange(p).repeat(p).double()
    w = 2 * math.pi * k / p
    return torch.stack([torch.cos(w * (a + b)), torch.sin(w * (a + b))], 1)


def test_shift_map_rotates_a_fourier_plane_and_an_orbit_is_its_own_symmetry_null():
    p, k, t = 11, 3, 4
    Y = _fourier_grid(p, k)
    M = shift_map(Y, p, t)
    ang = 2 * math.pi * k * 2 * t / p  # the shift moves a + b by 2t
    rot = torch.tensor(
        [[math.cos(ang), math.sin(ang)], [-math.sin(ang), math.cos(ang)]], dtype=torch.float64
    )
    assert torch.allclose(M, rot, atol=1e-10)
    assert torch.allclose(Y[shift_permutation(p, t)], Y @ M, atol=1e-10)
    # a dictionary of one atom per answer class (the orbit of the shift) is mapped onto itself
    span = data_span(Y)
    angles = torch.tensor([2 * math.pi * k * c / p for c in range(p)], dtype=torch.float64)
    D = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    z = torch.relu(Y @ D.T - 0.9)
    v = seed_view("a", D, D, span, z)
    moved = shifted_view(v, span.basis.T @ M @ span.basis, p, t)
    m, _ = pair_agreement(v, moved)
    assert m["pw_mcc_dec"] == pytest.approx(1.0) and m["act_mcc"] == pytest.approx(1.0)
    # three atoms off the orbit's phases do not map onto themselves
    D3 = D[:3] @ torch.tensor(
        [[math.cos(0.1), math.sin(0.1)], [-math.sin(0.1), math.cos(0.1)]], dtype=torch.float64
    )
    v3 = seed_view("b", D3, D3, span, torch.relu(Y @ D3.T - 0.9))
    m3, _ = pair_agreement(v3, shifted_view(v3, span.basis.T @ M @ span.basis, p, t))
    assert m3["pw_mcc_dec"] < 0.99


def test_symmetry_null_is_computed_on_a_grid_and_per_latent_reappearance_is_per_latent():
    p = 11
    Y = torch.cat([_fourier_grid(p, 2), 0.5 * _fourier_grid(p, 5)], 1)
    span = data_span(Y)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g, dtype=torch.float64)
    views = []
    for s in range(3):
        D = base.clone()
        D[5] = torch.randn(
            4, generator=torch.Generator().manual_seed(100 + s), dtype=torch.float64
        )  # unshared
        views.append(seed_view(f"s{s}", D, D, span, torch.relu(Y @ D.T)))
    res = seed_agreement(views, grid=(span.data_coords(Y), p))
    assert set(res["levels"]["pw_mcc_dec"]["nulls"]) == {
        "isotropic",
        "matched_geometry",
        "symmetry",
    }
    reap = res["per_latent"]["s0"]["reappearance"]
    assert reap[:5] == [1.0] * 5 and res["per_latent"]["s0"]["best_cos"][0] == pytest.approx(1.0)
    no_grid = seed_agreement(views)
    assert "symmetry" not in no_grid["levels"]["pw_mcc_dec"]["nulls"]


def test_covered_classes_by_hand():
    centroids = torch.eye(4, dtype=torch.float64)
    D = torch.tensor(
        [[1.0, 0.1, 0, 0], [0, 0, 0.5, 0.5]], dtype=torch.float64
    )  # cos 0.995 to class 0; 0.71 to 2 and 3
    assert covered_classes(D, centroids, 0.7) == {0, 2, 3}
    assert covered_classes(D, centroids, 0.8) == {0}
    assert covered_classes(D[:0], centroids) == set()
