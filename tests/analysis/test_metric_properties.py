"""Property-based tests (hypothesis) of the metric functions: explained variance, L0, PW-MCC,
mean-max |cos| and Fourier purity. Invariances, bounds, and agreement with slow references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from husai.analysis.latent_fourier import compute_fourier_overlap, latent_frequencies
from husai.analysis.stability import cosine_matrix, mean_max_abs_cos, pw_mcc
from husai.model.fourier import frequency_fractions
from husai.sae.metrics import explained_variance, reconstruction_metrics

torch.set_num_threads(1)
SETTINGS = settings(deadline=None, max_examples=100, suppress_health_check=[HealthCheck.too_slow])
PRIMES = st.sampled_from([5, 7, 11, 13])


def floats(lo, hi):
    # husai flushes denormals at import (torch.set_flush_denormal), so hypothesis must not draw them
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def matrices(draw, n=st.integers(2, 12), d=st.integers(1, 6), scale=1.0):
    """A random float64 [n, d] tensor from a seed (fast and shrinkable)."""
    n, d = draw(n), draw(d)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale


def _nonconstant(x: torch.Tensor) -> bool:
    return float((x - x.mean(0)).pow(2).sum()) > 1e-6


# --------------------------------------------------------------------------------------------- EV


@SETTINGS
@given(matrices())
def test_ev_is_one_for_perfect_reconstruction(x):
    assume(_nonconstant(x))
    assert float(explained_variance(x, x)) == pytest.approx(1.0, abs=1e-12)


@SETTINGS
@given(matrices())
def test_ev_is_zero_for_the_mean(x):
    assume(_nonconstant(x))
    assert float(explained_variance(x, x.mean(0).expand_as(x))) == pytest.approx(0.0, abs=1e-9)


@SETTINGS
@given(matrices(), st.integers(0, 2**31 - 1), floats(-50, 50), floats(0.0, 2.0))
def test_ev_is_shift_invariant_and_at_most_one(x, seed, c, noise):
    assume(_nonconstant(x))
    g = torch.Generator().manual_seed(seed)
    x_hat = x + noise * torch.randn(x.shape, generator=g, dtype=torch.float64)
    ev = float(explained_variance(x, x_hat))
    assert ev <= 1 + 1e-12
    assert float(explained_variance(x + c, x_hat + c)) == pytest.approx(
        ev, abs=1e-6 * (1 + abs(ev))
    )
    # the slow reference: 1 - FVU, written out
    ref = 1 - ((x - x_hat) ** 2).sum().item() / ((x - x.mean(0)) ** 2).sum().item()
    assert ev == pytest.approx(ref, rel=1e-9, abs=1e-9)


@SETTINGS
@given(matrices(n=st.integers(2, 8)), st.integers(1, 4), st.integers(0, 1000))
def test_ev_batched_over_seeds(x, S, seed):
    g = torch.Generator().manual_seed(seed)
    assume(_nonconstant(x))
    x_hat = x + torch.randn(S, *x.shape, generator=g, dtype=torch.float64)
    ev = explained_variance(x, x_hat)
    assert ev.shape == (S,)
    for s in range(S):
        assert float(ev[s]) == pytest.approx(float(explained_variance(x, x_hat[s])), abs=1e-12)


# --------------------------------------------------------------------------------------------- L0


class HandMadeSAE:
    """The interface reconstruction_metrics needs: encode x [N, d] -> z [S, N, m]; decode
    z -> x_hat."""

    def __init__(self, z: torch.Tensor, W: torch.Tensor):
        self.z, self.W = z, W  # z [S, N, m] fixed codes; W [S, m, d]

    def encode(self, x):
        n0 = self._seen
        self._seen += x.shape[0]
        return self.z[:, n0 : n0 + x.shape[0]]

    def decode(self, z):
        return torch.einsum("snm,smd->snd", z, self.W)

    def reset(self):
        self._seen = 0
        return self


@SETTINGS
@given(
    st.integers(1, 3),
    st.integers(2, 20),
    st.integers(1, 10),
    st.integers(0, 2**31 - 1),
    floats(0, 1),
)
def test_l0_dead_dense_match_a_direct_count(S, N, m, seed, density):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(S, N, m, generator=g) < density
    z = torch.rand(S, N, m, generator=g).clamp_min(1e-3) * mask  # >= 0, zero exactly where off
    sae = HandMadeSAE(z, torch.randn(S, m, 3, generator=g)).reset()
    x = torch.randn(N, 3, generator=g)
    m_ = reconstruction_metrics(sae, x)
    for s in range(S):
        active = [[float(z[s, n, j]) > 0 for j in range(m)] for n in range(N)]
        assert m_["l0"][s] == pytest.approx(sum(map(sum, active)) / N)
        fires = [sum(active[n][j] for n in range(N)) for j in range(m)]
        assert m_["frac_dead"][s] == pytest.approx(sum(f == 0 for f in fires) / m)
        assert m_["frac_dense"][s] == pytest.approx(sum(f > 0.1 * N for f in fires) / m)
        assert 0 <= m_["l0"][s] <= m


@SETTINGS
@given(st.integers(1, 6), st.integers(0, 1000))
def test_topk_sae_has_l0_exactly_k(k, seed):
    from husai.sae.architectures import TopKSAE

    torch.manual_seed(seed)
    sae = TopKSAE(2, 4, 8, k).init_weights([seed, seed + 1], torch.zeros(4))
    with torch.no_grad():  # positive pre-activations everywhere, so TopK keeps exactly k
        sae.b_enc.fill_(100.0)
    x = torch.randn(16, 4)
    assert reconstruction_metrics(sae, x)["l0"] == pytest.approx([float(k)] * 2)


# ------------------------------------------------------------------------------------------- PW-MCC


def brute_force_mcc(A: torch.Tensor, B: torch.Tensor, signed: bool = True) -> float:
    """max over all injective matchings of the mean matched cosine (|cos| when unsigned)."""
    C = cosine_matrix(A, B).numpy()
    n, m = C.shape
    if n > m:
        C, n, m = C.T, m, n
    best = -math.inf
    for cols in itertools.permutations(range(m), n):
        v = C[np.arange(n), list(cols)]
        best = max(best, float(np.abs(v).mean() if not signed else v.mean()))
    return best


def _unit_ok(A) -> bool:
    return bool((A.norm(dim=1) > 1e-6).all())


@SETTINGS
@given(
    matrices(n=st.integers(1, 6), d=st.just(4)),
    matrices(n=st.integers(1, 6), d=st.just(4)),
    st.booleans(),
)
def test_pw_mcc_matches_brute_force(A, B, signed):
    assume(_unit_ok(A) and _unit_ok(B))
    # Hungarian picks pairs on |C| when unsigned and returns their |cos|; compare the objective it
    # maximises
    assert pw_mcc(A, B, signed=signed) == pytest.approx(brute_force_mcc(A, B, signed), abs=1e-9)


@SETTINGS
@given(matrices(n=st.integers(1, 8), d=st.integers(2, 5)), st.data())
def test_pw_mcc_invariances_and_bounds(A, data):
    assume(_unit_ok(A))
    n, d = A.shape
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(data.draw(st.integers(1, 8)), d, generator=g, dtype=torch.float64)
    assume(_unit_ok(B))
    v = pw_mcc(A, B)
    assert -1 - 1e-12 <= v <= 1 + 1e-12
    assert pw_mcc(B, A) == pytest.approx(v, abs=1e-9)  # symmetric
    perm = torch.randperm(n, generator=g)
    assert pw_mcc(A[perm], B) == pytest.approx(v, abs=1e-9)  # latent order does not matter
    scale = torch.rand(n, 1, generator=g, dtype=torch.float64) * 100 + 1e-3
    assert pw_mcc(A * scale, B) == pytest.approx(v, abs=1e-9)  # positive row scaling
    assert pw_mcc(A, A[perm] * scale) == pytest.approx(
        1.0, abs=1e-9
    )  # same atoms, shuffled and rescaled


@SETTINGS
@given(
    matrices(n=st.integers(1, 8), d=st.integers(2, 5)),
    matrices(n=st.integers(1, 8), d=st.integers(2, 5)),
    st.integers(0, 2**31 - 1),
)
def test_mean_max_abs_cos_relations(A, B, seed):
    d = min(A.shape[1], B.shape[1])
    A, B = A[:, :d], B[:, :d]
    assume(_unit_ok(A) and _unit_ok(B))
    g = torch.Generator().manual_seed(seed)
    v = mean_max_abs_cos(A, B)
    assert 0 - 1e-12 <= v <= 1 + 1e-12
    assert mean_max_abs_cos(B, A) == pytest.approx(v, abs=1e-12)
    signs = torch.where(torch.rand(A.shape[0], 1, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    assert mean_max_abs_cos(A * signs, B) == pytest.approx(v, abs=1e-12)  # sign-flip invariant
    # slow reference
    C = np.abs(cosine_matrix(A, B).numpy())
    assert v == pytest.approx((C.max(1).mean() + C.max(0).mean()) / 2, abs=1e-12)


@SETTINGS
@given(st.integers(1, 6), st.integers(2, 5), st.integers(0, 2**31 - 1))
def test_mean_max_abs_cos_bounds_the_matched_value_for_equal_sizes(n, d, seed):
    """stability.py: mean-max |cos| is >= the matched signed value (and >= the unsigned MCC) — true
    for dictionaries of the same size, where every row and every column is matched."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g, dtype=torch.float64)
    B = torch.randn(n, d, generator=g, dtype=torch.float64)
    v = mean_max_abs_cos(A, B)
    assert v >= pw_mcc(A, B) - 1e-12
    assert v >= pw_mcc(A, B, signed=False) - 1e-12
    assert pw_mcc(A, B, signed=False) >= abs(pw_mcc(A, B)) - 1e-12


def test_mean_max_abs_cos_can_be_below_mcc_for_unequal_sizes():
    """Documented caveat: with d_sae1 != d_sae2 unmatched columns pull the symmetrised mean down."""
    A = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    B = torch.eye(2, dtype=torch.float64)
    assert pw_mcc(A, B) == 1.0 and mean_max_abs_cos(A, B) == 0.75


def test_sign_flipped_orthonormal_dictionary_scores_zero():
    """stability.py's documented example: a fully sign-flipped orthonormal copy scores exactly 0."""
    Q = torch.linalg.qr(
        torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )[0]
    assert pw_mcc(Q, -Q) == pytest.approx(0.0, abs=1e-12)
    assert pw_mcc(Q, -Q, signed=False) == pytest.approx(1.0, abs=1e-12)
    assert mean_max_abs_cos(Q, -Q) == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------------------------------ Fourier


def slow_frequency_fractions(acts: np.ndarray, p: int) -> np.ndarray:
    """Reference: Fourier basis built by hand, each column projected on every 2-D basis function
    cos/sin(2 pi k a / p) x cos/sin(2 pi l b / p) and the energy of each 3x3 block summed."""
    x = np.arange(p)
    basis = [np.ones(p) / np.sqrt(p)]
    for k in range(1, (p - 1) // 2 + 1):
        for f in (np.cos, np.sin):
            v = f(2 * np.pi * k * x / p)
            basis.append(v / np.linalg.norm(v))
    K = (p - 1) // 2
    out = np.zeros((acts.shape[1], K))
    for j in range(acts.shape[1]):
        g = acts[:, j].reshape(p, p)
        g = g - g.mean()
        total = (g**2).sum()
        if total <= 1e-20:
            continue
        for k in range(1, K + 1):
            idx = [0, 2 * k - 1, 2 * k]
            e = sum(
                float(np.einsum("ab,a,b->", g, basis[i], basis[i2])) ** 2 for i in idx for i2 in idx
            )
            out[j, k - 1] = e / total
    return out


@st.composite
def grid_acts(draw, n=st.integers(1, 4)):
    p = draw(PRIMES)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return p, torch.randn(p * p, draw(n), generator=g, dtype=torch.float64)


@SETTINGS
@given(grid_acts())
def test_frequency_fractions_agree_with_slow_reference(pa):
    p, acts = pa
    fr = frequency_fractions(acts, p).numpy()
    np.testing.assert_allclose(fr, slow_frequency_fractions(acts.numpy(), p), atol=1e-9)
    assert fr.shape == (acts.shape[1], (p - 1) // 2)
    assert (fr >= -1e-12).all() and (fr <= 1 + 1e-12).all()
    assert (fr.sum(1) <= 1 + 1e-9).all()


@SETTINGS
@given(grid_acts(), floats(1e-3, 1e3), floats(-1e3, 1e3))
def test_purity_invariant_to_scale_and_shift(pa, scale, shift):
    p, acts = pa
    purity, freq, _ = latent_frequencies(acts, p)
    p2, f2, _ = latent_frequencies(acts * scale + shift, p)
    np.testing.assert_allclose(p2.numpy(), purity.numpy(), atol=1e-7)
    assert ((purity >= 0) & (purity <= 1 + 1e-12)).all()
    # the argmax frequency is stable unless two blocks nearly tie
    fr = frequency_fractions(acts, p)
    top2 = fr.topk(2, dim=1).values if fr.shape[1] > 1 else None
    if top2 is not None:
        clear = (top2[:, 0] - top2[:, 1]) > 1e-6
        assert torch.equal(freq[clear], f2[clear])


@SETTINGS
@given(PRIMES, st.data())
def test_planted_single_frequency_latents_are_pure(p, data):
    """Any combination of cos/sin(2 pi k (alpha a + beta b) / p + phi) terms of ONE frequency k —
    with alpha, beta in {0, 1, -1} — lies in k's 3x3 block: purity 1, frequency k."""
    k = data.draw(st.integers(1, (p - 1) // 2))
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    n_terms = data.draw(st.integers(1, 3))
    z = torch.zeros(p * p, dtype=torch.float64)
    for _ in range(n_terms):
        alpha, beta = data.draw(st.sampled_from([(1, 0), (0, 1), (1, 1), (1, -1), (-1, 1)]))
        amp = data.draw(floats(0.1, 10))
        phi = data.draw(floats(0, 2 * math.pi))
        z += amp * torch.cos(2 * math.pi * k * (alpha * a + beta * b) / p + phi)
    # products of one-frequency terms stay in the block too: cos(w a) * sin(w b)
    if data.draw(st.booleans()):
        z += torch.cos(2 * math.pi * k * a / p) * torch.sin(2 * math.pi * k * b / p)
    z = z + data.draw(floats(-5, 5))
    assume(float(z.var()) > 1e-6)
    purity, freq, live = latent_frequencies(z[:, None], p)
    assert float(purity[0]) == pytest.approx(1.0, abs=1e-9)
    assert int(freq[0]) == k
    relu = torch.relu(z - z.mean())[
        :, None
    ]  # a rectified latent is NOT single-frequency in general
    assert float(latent_frequencies(relu, p)[0][0]) <= 1 + 1e-12


@SETTINGS
@given(grid_acts(n=st.integers(1, 5)), st.integers(0, 2**31 - 1))
def test_fourier_overlap_is_the_mean_purity_of_live_latents(pa, seed):
    p, acts = pa
    g = torch.Generator().manual_seed(seed)
    dead = torch.rand(acts.shape[1], generator=g) < 0.3
    acts = acts.clone()
    acts[:, dead] = 0.0
    purity, freq, live = latent_frequencies(acts, p)
    assert torch.equal(live, ~dead)
    assert (freq[dead] == 0).all() and (purity[dead] == 0).all()
    fo = compute_fourier_overlap(acts, p)
    if live.any():
        assert fo == pytest.approx(float(purity[live].mean()), abs=1e-12) and 0 <= fo <= 1
        # invariant to the order of the latents
        perm = torch.randperm(acts.shape[1], generator=g)
        assert compute_fourier_overlap(acts[:, perm], p) == pytest.approx(fo, abs=1e-12)
    else:
        assert math.isnan(fo)
