"""The compiled CPU kernels' sparse gathers and sums (sparse_decode, decode_backward, sum_by_latent)
and decoder-constraint helpers against slow references written here, and every kernel's results on
1, 2 and 3 threads. The selections and the build without AVX-512: test_sae_kernels.py."""

from __future__ import annotations

import pytest
import torch
from test_sae_kernels import _allowed, _gen, _kernels_on, _threads  # noqa: F401 (_kernels_on: autouse fixture)

from husai.sae import kernels

# ---------------------------------------------------------------- sparse gathers and sums


def _entries(S, M, n_rows, d_sae, g, zero_frac=0.2):
    """Entry lists per seed: rows [S, M] sorted per seed in [0, n_rows), cols [S, M] in
    [0, d_sae - 3) (the last 3 latents idle), weights [S, M] with about zero_frac exactly 0."""
    rows = torch.randint(0, n_rows, (S, M), generator=g).sort(1).values
    cols = torch.randint(0, d_sae - 3, (S, M), generator=g)
    w = torch.randn(S, M, generator=g)
    w[torch.rand(S, M, generator=g) < zero_frac] = 0.0
    w[:, M // 2] = 0.0  # at least one per seed
    return w, rows, cols


def _ref_decode(z, rows, cols, W, R):
    """out[s, r] = sum over entries at row r of z W[s, col], summed in entry order (index_add_)."""
    out = torch.zeros(z.shape[0], R, W.shape[-1])
    for s in range(z.shape[0]):
        out[s].index_add_(0, rows[s], z[s, :, None] * W[s, cols[s]])
    return out


def _ref_sum_by_latent(w, rows, cols, T, d_sae):
    """out[s, j] = sum over entries at latent j of w T[s, row mod R]; bias[s, j] = sum of those
    w."""
    S, R = T.shape[:2]
    out, bias = torch.zeros(S, d_sae, T.shape[-1]), torch.zeros(S, d_sae)
    for s in range(S):
        out[s].index_add_(0, cols[s], w[s, :, None] * T[s, rows[s] % R])
        bias[s].index_add_(0, cols[s], w[s])
    return out, bias


TIGHT = dict(rtol=1e-6, atol=1e-6)  # both sum in entry order (measured: bitwise equal here)


@pytest.mark.parametrize(
    "S,R,d_sae,d_in,M", [(3, 20, 40, 16, 100), (1, 7, 10, 5, 3), (5, 64, 256, 33, 512)]
)
def test_sparse_decode(S, R, d_sae, d_in, M):
    """out[s, r] = sum of z W[s, col] over seed s's entries at row r: the index_add_ reference, zero
    rows where no entry lands, and the exactly-0 z (which the kernel skips) change nothing: the same
    result as with those entries dropped."""
    g = _gen(S * R + M)
    z, rows, cols = _entries(S, M, R - 2, d_sae, g)  # rows get nothing
    W = torch.randn(S, d_sae, d_in, generator=g)
    out = kernels.sparse_decode(z, rows, cols, W, R)
    torch.testing.assert_close(out, _ref_decode(z, rows, cols, W, R), **TIGHT)
    assert not bool(out[:, R - 2 :].any())
    keep = z[0] != 0
    dropped = kernels.sparse_decode(z[:1, keep], rows[:1, keep], cols[:1, keep], W[:1], R)
    torch.testing.assert_close(out[:1], dropped, **TIGHT)


@pytest.mark.parametrize("S,R,d_sae,d_in,M", [(3, 20, 40, 16, 100), (2, 9, 12, 130, 40)])
def test_decode_backward_dots(S, R, d_sae, d_in, M):
    """decode_backward's g_z[s, e] = <G[s, rows[e]], W[s, cols[e]]> (float64 reference: the kernel's
    simd reduction sums in another order); with skip_zero, exactly 0 where z is 0 and the plain dot
    (bitwise) elsewhere."""
    g = _gen(S * R + M + 1)
    z, rows, cols = _entries(S, M, R, d_sae, g, zero_frac=0.3)
    G = torch.randn(S, R, d_in, generator=g)
    W = torch.randn(S, d_sae, d_in, generator=g)
    dots = kernels.decode_backward(z, rows, cols, G, W)[1]
    ref = torch.stack(
        [(G[s, rows[s]].double() * W[s, cols[s]].double()).sum(-1) for s in range(S)]
    ).float()
    torch.testing.assert_close(dots, ref, rtol=1e-5, atol=1e-5)
    skipped = kernels.decode_backward(z, rows, cols, G, W, skip_zero=True)[1]
    zero = z == 0
    assert bool((skipped[zero] == 0).all()) and bool((dots[zero] != 0).all())
    assert torch.equal(skipped[~zero], dots[~zero])


@pytest.mark.parametrize(
    "S,R,d_sae,d_in,M", [(3, 20, 40, 16, 100), (1, 6, 9, 4, 5), (4, 32, 200, 33, 300)]
)
@pytest.mark.parametrize("with_bias", [True, False])
def test_sum_by_latent(S, R, d_sae, d_in, M, with_bias):
    """out[s, j] = sum of w T[s, row mod R] over seed s's entries at latent j (rows run to 2R - 1:
    AuxK's entries reuse the batch's inputs), and the sums of w per latent: the index_add_
    reference, zero rows for idle latents, exactly-0 w (skipped) changing nothing."""
    g = _gen(S * R + M + 2)
    w, rows, cols = _entries(S, M, 2 * R, d_sae, g)
    assert bool((rows >= R).any())
    T = torch.randn(S, R, d_in, generator=g)
    out, bias = kernels.sum_by_latent(w, rows, cols, T, d_sae, with_bias)
    ref, ref_bias = _ref_sum_by_latent(w, rows, cols, T, d_sae)
    torch.testing.assert_close(out, ref, **TIGHT)
    assert not bool(out[:, d_sae - 3 :].any())
    if with_bias:
        torch.testing.assert_close(bias, ref_bias, **TIGHT)
    else:
        assert bias is None
    keep = w[0] != 0
    dropped, _ = kernels.sum_by_latent(w[:1, keep], rows[:1, keep], cols[:1, keep], T[:1], d_sae)
    torch.testing.assert_close(out[:1], dropped, **TIGHT)


def test_sums_run_in_entry_order():
    """decode's and sum_by_latent's sums run in entry order (what makes a seed's result independent
    of the seeds trained beside it): three entries 1, 1e8, -1e8 at one output row sum to 0 in
    float32 in that order ((1 + 1e8) - 1e8) and to 1 in any order that adds the two large ones
    first. The index_add_ references sum in entry order too."""
    z = torch.tensor([[1.0, 1e8, -1e8, 3.0]])
    rows = torch.tensor([[0, 0, 0, 1]])
    cols = torch.tensor([[0, 1, 2, 1]])
    ones = torch.ones(1, 3, 4)
    out = kernels.sparse_decode(z, rows, cols, ones, 2)
    torch.testing.assert_close(out, _ref_decode(z, rows, cols, ones, 2), rtol=0, atol=0)
    assert not bool(out[0, 0].any()) and bool((out[0, 1] == 3).all())
    by_latent, bias = kernels.sum_by_latent(
        z, cols, rows, ones[:, :3], 2, with_bias=True
    )  # latent = rows here
    ref, ref_bias = _ref_sum_by_latent(z, cols, rows, ones[:, :3], 2)
    torch.testing.assert_close(by_latent, ref, rtol=0, atol=0)
    torch.testing.assert_close(bias, ref_bias, rtol=0, atol=0)
    assert not bool(by_latent[0, 0].any()) and float(bias[0, 0]) == 0.0


# ---------------------------------------------------------------- decoder-constraint helpers


def test_weighted_row_sum():
    """out[s] = sum_j w[s, j] W[s, j] (b_dec's gradient), zero weights included, vs einsum."""
    g = _gen(11)
    S, d_sae, d_in = 3, 50, 24
    w = torch.randn(S, d_sae, generator=g)
    w[torch.rand(S, d_sae, generator=g) < 0.3] = 0.0
    w[2] = 0.0  # a seed with only zero weights: a zero row
    W = torch.randn(S, d_sae, d_in, generator=g)
    out = kernels.weighted_row_sum(w, W)
    torch.testing.assert_close(out, torch.einsum("sj,sjd->sd", w, W), rtol=1e-5, atol=1e-5)
    assert not bool(out[2].any())


def test_remove_parallel():
    """In place, G[r] -= <G[r], W[r]> W[r] for unit rows W: the reference, and the result is
    orthogonal to W's rows."""
    g = _gen(12)
    G = torch.randn(3, 40, 17, generator=g)
    W = torch.randn(3, 40, 17, generator=g)
    W = W / W.norm(dim=-1, keepdim=True)
    ref = G - (G * W).sum(-1, keepdim=True) * W
    kernels.remove_parallel_(G, W)
    torch.testing.assert_close(G, ref, rtol=1e-5, atol=1e-5)
    assert float((G * W).sum(-1).abs().max()) < 1e-5


def test_normalize_rows():
    """In place, W[r] /= max(||W[r]||, eps): unit rows, an all-zero row stays zero, a row shorter
    than eps is divided by eps."""
    g = _gen(13)
    W = torch.randn(2, 30, 19, generator=g) * 5
    W[0, 3] = 0.0
    W[1, 7] = 1e-10
    ref = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    kernels.normalize_rows_(W, 1e-8)
    torch.testing.assert_close(W, ref, rtol=1e-6, atol=1e-6)
    assert not bool(W[0, 3].any())
    torch.testing.assert_close(W[1, 7], torch.full((19,), 1e-2), rtol=1e-5, atol=0)
    norms = W.norm(dim=-1)
    norms[0, 3] = norms[1, 7] = 1.0
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- thread-count invariance


def test_results_do_not_depend_on_thread_count():
    """Each sum runs in entry order in one task whatever the thread count (the work is split by
    output row), and the selections are canonical: topk_rows, topk_among, sparse_decode,
    sum_by_latent and decode_backward give bitwise the same results on 1, 2 and 3 threads (the
    number of output ranges per seed, kernels._parts, changes with the thread count)."""
    g = _gen(21)
    S, B, d, k = 3, 24, 300, 10
    x = torch.randn(B, S, d, generator=g).transpose(0, 1)
    bias = torch.randn(S, d, generator=g)
    allowed = _allowed(S, d, (100, 4, 40), g)
    R, d_sae, d_in, M = 50, 64, 20, 400
    z, rows, cols = _entries(S, M, 2 * R, d_sae, g)
    W = torch.randn(S, d_sae, d_in, generator=g)
    T = torch.randn(S, R, d_in, generator=g)

    def run():
        return [
            *kernels.topk_rows(x, k, bias),
            *kernels.topk_among(x, allowed, k, above=0.0, bias=bias),
            kernels.sparse_decode(z, rows // 2, cols, W, R),
            *kernels.sum_by_latent(z, rows, cols, T, d_sae, True),
            *kernels.decode_backward(z, rows % R, cols, T, W),
            *kernels.decode_backward(z, rows % R, cols, T, W, True),
        ]

    results = {}
    for n in (1, 2, 3):
        with _threads(n):
            assert torch.get_num_threads() == n
            results[n] = run()
    for n in (2, 3):
        for a, b in zip(results[1], results[n]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("skip_zero", [False, True])
def test_decode_backward_weight_gradient_is_sum_by_latent(skip_zero):
    """decode_backward's W gradient is sum_by_latent(z, ..., G) (checked above against a slow
    reference) bitwise, with zero entries in z, and both outputs are independent of the thread
    count."""
    g = _gen(11)
    S, M, R, d_sae, d_in = 3, 400, 20, 64, 24
    rows = torch.randint(0, R, (S, M), generator=g).sort(1).values
    cols = torch.randint(0, d_sae, (S, M), generator=g)
    z = torch.randn(S, M, generator=g)
    z[torch.rand(S, M, generator=g) < 0.3] = 0.0
    G, W = torch.randn(S, R, d_in, generator=g), torch.randn(S, d_sae, d_in, generator=g)
    want_W = kernels.sum_by_latent(z, rows, cols, G, d_sae)[0]
    want_z = torch.stack(
        [(G[s, rows[s]].double() * W[s, cols[s]].double()).sum(-1) for s in range(S)]
    ).float()
    if skip_zero:
        want_z[z == 0] = 0.0
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            g_W, g_z = kernels.decode_backward(z, rows, cols, G, W, skip_zero=skip_zero)
            assert torch.equal(g_W, want_W)
            torch.testing.assert_close(g_z, want_z, rtol=1e-5, atol=1e-5)
            if n == 1:
                first = g_z
            assert torch.equal(g_z, first)
    finally:
        torch.set_num_threads(threads)
