"""Cross-seed stability metrics and their nulls, against hand-built cases and brute force."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from husai.analysis.nulls import isotropic_dictionary, matched_geometry_dictionary, null_stats
from husai.analysis.stability import (
    compute_pwmcc,
    cosine_matrix,
    frequency_set_stability,
    mean_max_abs_cos,
    pair_metrics,
    pairwise_matrices,
    principal_cosines,
    pw_mcc,
    span_basis,
    subspace_overlap,
    subspace_stability,
)

torch.set_num_threads(1)


def rand(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize(
    "n,mmc,hung", [(1024, 0.299, 0.271), (512, 0.283, 0.254), (128, 0.247, 0.213)]
)
def test_isotropic_null_matches_the_known_values(n, mmc, hung):
    """Two sets of n random unit vectors in R^128 (docs/methods.md, "Nulls")."""
    pairs = [
        pair_metrics(A, B, A, B)
        for A, B in (
            (isotropic_dictionary(n, 128, 2 * t), isotropic_dictionary(n, 128, 2 * t + 1))
            for t in range(3)
        )
    ]
    assert np.mean([m["mean_max_abs_cos_dec"] for m in pairs]) == pytest.approx(mmc, abs=0.005)
    assert np.mean([m["pw_mcc_dec"] for m in pairs]) == pytest.approx(hung, abs=0.005)
    assert (
        max(m["shared_fraction"] for m in pairs) == 0.0
    )  # no random pair in R^128 reaches cos 0.7


def test_identical_dictionaries_score_one():
    A, E = rand(64, 16, 0), rand(64, 16, 1)
    m = pair_metrics(A, A, E, E)
    assert m == pytest.approx(
        {
            "pw_mcc_dec": 1.0,
            "mean_max_abs_cos_dec": 1.0,
            "pw_mcc_enc": 1.0,
            "mean_max_abs_cos_enc": 1.0,
            "shared_fraction": 1.0,
        }
    )


def test_permuted_and_rescaled_copy_scores_one():
    A, E = rand(50, 12, 2), rand(50, 12, 3)
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    scale = (
        torch.rand(50, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 10
        + 0.1
    )
    m = pair_metrics(A, A[perm] * scale, E, E[perm] / scale)
    assert all(v == pytest.approx(1.0) for v in m.values())


def test_sign_flipped_copy_is_a_different_dictionary_for_signed_pw_mcc():
    """Documented: signed PW-MCC counts w and -w as different features. For an orthonormal
    dictionary (n <= d) the best assignment against the flipped copy is any derangement, cosine 0;
    the sign-agnostic variants give 1."""
    Q = torch.linalg.qr(rand(16, 8, 4))[0].T  # [8, 16] orthonormal rows
    assert pw_mcc(Q, -Q) == pytest.approx(0.0, abs=1e-12)
    assert pw_mcc(Q, -Q, signed=False) == pytest.approx(1.0)
    assert mean_max_abs_cos(Q, -Q) == pytest.approx(1.0)
    # flipping one atom of a generic dictionary: mean-max |cos| does not notice, signed PW-MCC does
    A = rand(20, 64, 5)
    B = A.clone()
    B[0] *= -1
    assert mean_max_abs_cos(A, B) == pytest.approx(1.0)
    assert pw_mcc(A, B) < 1 - 1 / 20


def test_hungarian_equals_brute_force_on_tiny_dictionaries():
    for seed in range(5):
        A, B = rand(6, 4, 10 + seed), rand(6, 4, 20 + seed)
        C = cosine_matrix(A, B).numpy()
        best = max(
            np.mean([C[i, s[i]] for i in range(6)]) for s in itertools.permutations(range(6))
        )
        assert pw_mcc(A, B) == pytest.approx(best)
        mm = (np.abs(C).max(1).mean() + np.abs(C).max(0).mean()) / 2
        assert mean_max_abs_cos(A, B) == pytest.approx(mm)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 10), seed=st.integers(0, 10**6))
def test_properties_permutation_scale_invariance_and_bounds(n, d, seed):
    A, B = rand(n, d, seed), rand(n, d, seed + 1)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) + 0.01
    v, mm = pw_mcc(A, B), mean_max_abs_cos(A, B)
    assert pw_mcc(A[perm] * scale, B) == pytest.approx(v, abs=1e-9)
    assert pw_mcc(A, B[perm]) == pytest.approx(v, abs=1e-9)
    assert mean_max_abs_cos(A[perm] * scale, B) == pytest.approx(mm, abs=1e-9)
    assert pw_mcc(A, B) == pytest.approx(pw_mcc(B, A), abs=1e-9)  # symmetric
    assert (
        -1 - 1e-9 <= v <= mm + 1e-9 <= 1 + 2e-9
    )  # a one-to-one signed match never beats free |max|


def test_compute_pwmcc_accepts_sae_like_objects():
    class S:
        def __init__(self, W):
            self.W_dec = W

    A = rand(30, 8, 6)
    assert compute_pwmcc(S(A), S(A.flip(0))) == pytest.approx(1.0)
    assert compute_pwmcc(A, rand(30, 8, 7)) < 0.9


def test_shared_fraction_needs_both_encoder_and_decoder():
    d = 32
    D = torch.linalg.qr(rand(d, d, 8))[0].T[:20]  # 20 orthonormal atoms in R^32
    E2 = D.clone()
    E2[:5] = torch.linalg.qr(rand(d, d, 9))[0].T[
        20:25
    ]  # 5 encoder atoms replaced: cos ~ 0 with their partners
    for match_on in ("encoder", "decoder"):
        m = pair_metrics(D, D, D, E2, match_on=match_on)
        assert m["shared_fraction"] == pytest.approx(15 / 20)
        assert m["pw_mcc_dec"] == pytest.approx(1.0)


def test_null_stats_arithmetic_and_zero_spread():
    s = null_stats(3.0, [1.0, 2.0, 3.0])
    assert (
        s["null_mean"] == 2.0
        and s["null_std"] == 1.0
        and s["z"] == 1.0
        and s["exceeds_null_max"] is False
    )
    s = null_stats(0.5, [0.0, 0.0, 0.0])
    assert s["z"] is None and s["exceeds_null_max"] is True


def test_matched_geometry_null_has_the_dictionarys_second_moment_and_stays_in_its_span():
    basis = torch.linalg.qr(rand(16, 3, 11))[0]  # [16, 3]
    D = (
        rand(4000, 3, 12) * torch.tensor([3.0, 1.0, 0.3], dtype=torch.float64)
    ) @ basis.T  # anisotropic, rank 3
    A = matched_geometry_dictionary(D, 13)
    assert A.shape == D.shape and torch.allclose(
        A.norm(dim=1), torch.ones(4000, dtype=torch.float64)
    )
    assert (A - (A @ basis) @ basis.T).abs().max() < 1e-9  # inside the dictionary's span
    U = D / D.norm(dim=1, keepdim=True)
    # the unit atoms' second moment is the dictionary's (sampling error of 4000 atoms: ~0.01)
    ev = torch.linalg.eigvalsh(U.T @ U / len(U))[-3:]
    ev_null = torch.linalg.eigvalsh(A.T @ A / len(A))[-3:]
    assert torch.allclose(ev_null, ev, atol=0.02)
    assert matched_geometry_dictionary(D, 13).equal(A) and not matched_geometry_dictionary(
        D, 14
    ).equal(A)


def test_pairwise_matrix_structure_mean_and_std():
    A, B = rand(40, 10, 14), rand(40, 10, 15)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(2))
    res = pairwise_matrices([A, A[perm], B], [A, A[perm], B])
    M = np.array(res["pw_mcc_dec"]["matrix"])
    x = pw_mcc(A, B)
    assert M == pytest.approx(np.array([[1, 1, x], [1, 1, x], [x, x, 1]]))
    assert res["pw_mcc_dec"]["mean"] == pytest.approx((1 + 2 * x) / 3)
    assert res["pw_mcc_dec"]["std"] == pytest.approx(np.std([1, x, x], ddof=1))
    assert res["shared_fraction"]["matrix"][0][1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        pairwise_matrices([A])


def test_principal_angles_on_known_planes():
    e = torch.eye(5, dtype=torch.float64)
    t = 0.4
    Q1 = e[:, [0, 1]]
    Q2 = torch.stack([e[0], math.cos(t) * e[1] + math.sin(t) * e[2]], dim=1)
    assert principal_cosines(Q1, Q2).tolist() == pytest.approx([1.0, math.cos(t)])
    assert subspace_overlap(Q1, Q2) == pytest.approx((1 + math.cos(t) ** 2) / 2)


def test_rotating_phases_in_a_stable_plane_differ_from_instability():
    """Seed 1 tiles a plane at phases 0/120/240 deg, seed 2 at 60/180/300 deg: the span is identical
    (overlap 1) while atom matching gives cos 60 = 0.5. A seed using a different plane scores near
    null."""
    d = 32
    Q = torch.linalg.qr(rand(d, 4, 16))[0]
    u, v, u2, v2 = Q.T
    ph = lambda degs, x, y: torch.stack(
        [math.cos(math.radians(g)) * x + math.sin(math.radians(g)) * y for g in degs]
    )  # noqa: E731
    D1 = torch.cat([ph([0, 120, 240], u, v), rand(5, d, 17)])
    D2 = torch.cat([ph([60, 180, 300], u, v), rand(5, d, 18)])
    D3 = torch.cat([ph([0, 120, 240], u2, v2), rand(5, d, 19)])
    f = torch.tensor([7, 7, 7, 0, 0, 0, 0, 0])
    res = subspace_stability([D1, D2, D3], [f, f, f], [7, 9])
    pairs = {tuple(q["seeds"]): q for q in res[7]["pairs"]}
    assert res[7]["dims"] == [2, 2, 2]
    assert pairs[(0, 1)]["overlap"] == pytest.approx(1.0) and pairs[(0, 1)][
        "atom_pw_mcc"
    ] == pytest.approx(0.5)
    assert pairs[(0, 2)]["overlap"] == pytest.approx(0.0, abs=1e-12) and pairs[(0, 2)][
        "null_overlap"
    ] == pytest.approx(2 / d)
    assert res[9]["overlap_mean"] is None and res[9]["n_latents"] == [0, 0, 0]


def test_span_basis_ignores_a_small_stray_component():
    e = torch.eye(6, dtype=torch.float64)
    A = torch.stack([e[0], e[1], e[0] + e[1], e[0] - e[1] + 0.01 * e[2]])
    assert span_basis(A).shape == (6, 2)
    assert span_basis(A, rel=1e-8).shape == (6, 3)
    # tied singular values stay together: a permuted orthonormal set spans the same space
    Q = torch.linalg.qr(rand(40, 12, 30))[0].T  # 12 orthonormal atoms in R^40
    Q1, Q2 = span_basis(Q), span_basis(Q.flip(0))
    assert Q1.shape == (40, 12) and subspace_overlap(Q1, Q2) == pytest.approx(1.0)


def test_frequency_set_stability():
    r = frequency_set_stability([{1, 2, 3}, {2, 3, 4}, {2, 3}])
    assert r["jaccard"][0][1] == pytest.approx(2 / 4) and r["jaccard"][0][2] == pytest.approx(2 / 3)
    assert r["jaccard_mean"] == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 3)
    assert r["in_all"] == [2, 3] and r["in_any"] == [1, 2, 3, 4]
    # seeds that recover no frequency do not "agree perfectly"
    r = frequency_set_stability([set(), set(), {5}])
    assert math.isnan(r["jaccard"][0][1]) and r["jaccard_mean"] == 0.0
