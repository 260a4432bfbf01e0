"""The compiled CPU kernels (husai/sae/kernels.c through husai.sae.kernels) against slow references
written here: the top-k selections (canonical order: larger value first, then lower column; columns
out increasing), the sparse gathers and sums, the decoder-constraint helpers, thread-count
invariance, and the same checks against a build without AVX-512. Training with them, KernelAdam and
the build's failure and cache behaviour: test_sae_kernels_in_use.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from husai.sae import kernels

INF = float("inf")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _kernels_on(monkeypatch):
    """Every test here runs with the kernels on, whatever the caller's environment says, and the
    library must load (the kernel tests below would otherwise test nothing)."""
    monkeypatch.delenv("HUSAI_KERNELS", raising=False)
    assert kernels.library() is not None, "the compiled kernels did not load (is a C compiler installed?)"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _threads(n: int):
    """Context manager: torch (and so the kernels, which take torch's thread count) on n threads."""

    class _Ctx:
        def __enter__(self):
            self.old = torch.get_num_threads()
            torch.set_num_threads(n)

        def __exit__(self, *exc):
            torch.set_num_threads(self.old)

    return _Ctx()


# ---------------------------------------------------------------- references for the selections


def _rank(values: list[float], candidates: list[int], k: int) -> list[int]:
    """The k best of `candidates` (columns) by (value descending, column ascending), NaN ranking as
    -inf, returned in increasing column order."""
    def key(j):
        v = values[j]
        return (INF if math.isnan(v) else -v, j)  # -v: larger first; NaN as -inf, so last

    return sorted(sorted(candidates, key=key)[:k])


def _ref_topk_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Columns [..., k] of each row's top k (canonical order, columns increasing), plain loops."""
    flat = x.reshape(-1, x.shape[-1])
    cols = [_rank(row, list(range(len(row))), k) for row in flat.tolist()]
    return torch.tensor(cols, dtype=torch.long).reshape(*x.shape[:-1], k)


def _assert_same(a: torch.Tensor, b: torch.Tensor):
    """Bitwise equal values (NaN equal to NaN)."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _check_topk_rows(x: torch.Tensor, k: int, bias: torch.Tensor | None = None):
    vals, idx = kernels.topk_rows(x, k, bias)
    full = x if bias is None else x + bias.unsqueeze(1)  # the same float32 adds the kernel does
    ref_idx = _ref_topk_rows(full, k)
    assert vals.shape == idx.shape == (*x.shape[:-1], k)
    assert torch.equal(idx, ref_idx)
    _assert_same(vals, full.gather(-1, ref_idx))  # values read from x (+ bias) at those columns
    return vals, idx


# ---------------------------------------------------------------- topk_rows


@pytest.mark.parametrize("rows,d,k", [(48, 2048, 32), (40, 300, 7), (40, 50, 20), (40, 40, 30), (30, 64, 1),
                                      (20, 24, 24)])
def test_topk_rows_random(rows, d, k):
    """Random rows: the kernel's prefiltered path (d >= 2k: threshold from k group maxima, then a
    quickselect) and its rank-everything path (d < 2k, k = d) choose exactly the reference's
    columns, in increasing order, with x's values at them."""
    x = torch.randn(rows, d, generator=_gen(d * 1000 + k)) * 3
    _check_topk_rows(x, k)


@pytest.mark.parametrize("d,k", [(2048, 32), (300, 7), (50, 20), (40, 30)])
def test_topk_rows_ties_go_to_lower_column(d, k):
    """Integer-valued rows (values 0..3, many ties, and some -0.0 that must tie with +0.0): ties at
    the k-th value are broken toward the lower column, as the reference does."""
    g = _gen(d + k)
    x = torch.randint(0, 4, (40, d), generator=g).float()
    neg_zero = (x == 0) & (torch.rand(x.shape, generator=g) < 0.5)
    x[neg_zero] = -0.0
    assert bool(torch.signbit(x).any())
    _check_topk_rows(x, k)


@pytest.mark.parametrize("d,k", [(256, 16), (60, 20), (40, 30)])
def test_topk_rows_with_neg_inf(d, k):
    """Rows with -inf entries (a third of each row; one row almost all -inf, one all -inf): -inf
    is an ordinary value that ranks last, ties among -inf go to the lower column."""
    g = _gen(7 * d + k)
    x = torch.randn(20, d, generator=g)
    x[torch.rand(x.shape, generator=g) < 0.33] = -INF
    x[0, :] = -INF
    x[0, d // 2] = 1.0
    x[1, :] = -INF
    _check_topk_rows(x, k)


def test_topk_rows_never_prefers_nan():
    """Rows with NaNs (and no -inf): the columns are the reference's with NaN ranked as -inf (so a
    NaN is chosen only when fewer than k other values exist), and the values are read from x (NaN
    stays NaN). With -inf in the row too, a NaN may lose a tie at -inf to a higher column: the
    kernel drops NaNs before ranking unless it must fill up (documented in kernels.topk_rows)."""
    g = _gen(3)
    d, k = 64, 8
    x = torch.randn(12, d, generator=g)
    x[0, 5] = float("nan")  # one NaN among many values: never chosen
    x[1, :k] = float("nan")  # NaNs at the start of every group of the threshold's first sweep
    x[2, torch.rand(d, generator=g) < 0.5] = float("nan")
    x[3, :] = float("nan")
    x[3, [3, 40]] = torch.tensor([2.0, 1.0])  # two real values, then NaNs (lowest columns) fill the rest
    x[4, :] = float("nan")  # all NaN: the first k columns
    x[5, :d - 3] = float("nan")
    vals, idx = _check_topk_rows(x, k)
    assert torch.equal(idx[3], torch.tensor([0, 1, 2, 3, 4, 5, 6, 40]))
    assert bool(vals[3].isnan().sum() == 6) and not bool(vals[0].isnan().any())


@pytest.mark.parametrize("S,B,d,k", [(3, 10, 512, 16), (2, 7, 50, 20), (4, 5, 40, 30)])
def test_topk_rows_3d_layouts_with_bias(S, B, d, k):
    """x [S, B, d] with bias [S, d]: the contiguous layout and pre_acts' [B, S, d]-in-memory view
    (x.transpose(0, 1) of a contiguous [B, S, d]) both select from x + bias[s] as the reference
    does, and the view's results equal those of its contiguous copy."""
    g = _gen(S * B * d)
    bias = torch.randn(S, d, generator=g)
    x_c = torch.randn(S, B, d, generator=g)
    _check_topk_rows(x_c, k, bias)
    _check_topk_rows(x_c, k)
    x_t = torch.randn(B, S, d, generator=g).transpose(0, 1)
    assert not x_t.is_contiguous()
    for b in (bias, None):
        vals_t, idx_t = _check_topk_rows(x_t, k, b)
        vals_c, idx_c = kernels.topk_rows(x_t.contiguous(), k, b)
        assert torch.equal(idx_t, idx_c) and torch.equal(vals_t, vals_c)


# ---------------------------------------------------------------- topk_among


def _ref_topk_among(pre, allowed, k, above, bias, pad_col):
    """Per row: among its seed's allowed columns with value > above, the top k (canonical order),
    columns increasing; then padding (-inf at pad_col) up to the largest real count (at least 1)."""
    full = pre if bias is None else pre + bias.unsqueeze(1)
    S, B, _ = full.shape
    per_row = []
    for s in range(S):
        cols = torch.nonzero(allowed[s]).flatten().tolist()
        for row in full[s].tolist():
            real = [j for j in cols if row[j] > above]
            per_row.append([(row[j], j) for j in _rank(row, real, k)])
    width = max(1, max(len(r) for r in per_row))
    vals = [[v for v, _ in r] + [-INF] * (width - len(r)) for r in per_row]
    idx = [[j for _, j in r] + [pad_col] * (width - len(r)) for r in per_row]
    return torch.tensor(vals).view(S, B, width), torch.tensor(idx, dtype=torch.long).view(S, B, width)


def _allowed(S, d, counts, g):
    """allowed [S, d] with counts[s] random allowed columns in seed s."""
    allowed = torch.zeros(S, d, dtype=torch.bool)
    for s, n in enumerate(counts):
        allowed[s, torch.randperm(d, generator=g)[:n]] = True
    return allowed


@pytest.mark.parametrize("above", [-INF, 0.0])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("counts,k,pad_col", [
    ((120, 5, 0, 60), 8, 0),  # a seed with fewer allowed columns than k, one with none
    ((30, 30, 30, 30), 12, 0),  # every seed fills k (n < 2k once above = 0 drops half)
    ((3, 0, 2, 1), 8, 3),  # every seed short of k: k' trimmed to the largest count; padding at column 3
    ((0, 0, 0, 0), 4, 0),  # nothing allowed anywhere: one column of padding
])
def test_topk_among(above, layout, with_bias, counts, k, pad_col):
    """The top k among each seed's allowed columns with values > above (AuxK's search among the
    dead latents, above = 0), in both memory layouts and with a bias: the reference's columns and
    values, padding (-inf at pad_col) behind the real entries, the last dim trimmed to the largest
    real count. Some entries are -inf, which with above = -inf must still be left out."""
    S, B, d = 4, 6, 200
    g = _gen(sum(counts) * 31 + k)
    pre = torch.randn(S, B, d, generator=g) if layout == "contiguous" else torch.randn(B, S, d, generator=g).transpose(0, 1)
    pre[torch.rand(S, B, d, generator=g) < 0.1] = -INF
    allowed = _allowed(S, d, counts, g)
    bias = torch.randn(S, d, generator=g) * 0.5 if with_bias else None
    vals, idx = kernels.topk_among(pre, allowed, k, above=above, bias=bias, pad_col=pad_col)
    ref_vals, ref_idx = _ref_topk_among(pre, allowed, k, above, bias, pad_col)
    assert idx.shape == ref_idx.shape
    assert torch.equal(idx, ref_idx)
    _assert_same(vals, ref_vals)


# ---------------------------------------------------------------- sparse gathers and sums


def _entries(S, M, n_rows, d_sae, g, zero_frac=0.2):
    """Entry lists per seed: rows [S, M] sorted per seed in [0, n_rows), cols [S, M] in [0, d_sae - 3)
    (the last 3 latents idle), weights [S, M] with about zero_frac exactly 0."""
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
    """out[s, j] = sum over entries at latent j of w T[s, row mod R]; bias[s, j] = sum of those w."""
    S, R = T.shape[:2]
    out, bias = torch.zeros(S, d_sae, T.shape[-1]), torch.zeros(S, d_sae)
    for s in range(S):
        out[s].index_add_(0, cols[s], w[s, :, None] * T[s, rows[s] % R])
        bias[s].index_add_(0, cols[s], w[s])
    return out, bias


TIGHT = dict(rtol=1e-6, atol=1e-6)  # both sum in entry order (measured: bitwise equal here)


@pytest.mark.parametrize("S,R,d_sae,d_in,M", [(3, 20, 40, 16, 100), (1, 7, 10, 5, 3), (5, 64, 256, 33, 512)])
def test_sparse_decode(S, R, d_sae, d_in, M):
    """out[s, r] = sum of z W[s, col] over seed s's entries at row r: the index_add_ reference, zero
    rows where no entry lands, and the exactly-0 z (which the kernel skips) change nothing: the same
    result as with those entries dropped."""
    g = _gen(S * R + M)
    z, rows, cols = _entries(S, M, R - 2, d_sae, g)  # rows get nothing
    W = torch.randn(S, d_sae, d_in, generator=g)
    out = kernels.sparse_decode(z, rows, cols, W, R)
    torch.testing.assert_close(out, _ref_decode(z, rows, cols, W, R), **TIGHT)
    assert not bool(out[:, R - 2:].any())
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
    ref = torch.stack([(G[s, rows[s]].double() * W[s, cols[s]].double()).sum(-1) for s in range(S)]).float()
    torch.testing.assert_close(dots, ref, rtol=1e-5, atol=1e-5)
    skipped = kernels.decode_backward(z, rows, cols, G, W, skip_zero=True)[1]
    zero = z == 0
    assert bool((skipped[zero] == 0).all()) and bool((dots[zero] != 0).all())
    assert torch.equal(skipped[~zero], dots[~zero])


@pytest.mark.parametrize("S,R,d_sae,d_in,M", [(3, 20, 40, 16, 100), (1, 6, 9, 4, 5), (4, 32, 200, 33, 300)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_sum_by_latent(S, R, d_sae, d_in, M, with_bias):
    """out[s, j] = sum of w T[s, row mod R] over seed s's entries at latent j (rows run to 2R - 1:
    AuxK's entries reuse the batch's inputs), and the sums of w per latent: the index_add_ reference,
    zero rows for idle latents, exactly-0 w (skipped) changing nothing."""
    g = _gen(S * R + M + 2)
    w, rows, cols = _entries(S, M, 2 * R, d_sae, g)
    assert bool((rows >= R).any())
    T = torch.randn(S, R, d_in, generator=g)
    out, bias = kernels.sum_by_latent(w, rows, cols, T, d_sae, with_bias)
    ref, ref_bias = _ref_sum_by_latent(w, rows, cols, T, d_sae)
    torch.testing.assert_close(out, ref, **TIGHT)
    assert not bool(out[:, d_sae - 3:].any())
    if with_bias:
        torch.testing.assert_close(bias, ref_bias, **TIGHT)
    else:
        assert bias is None
    keep = w[0] != 0
    dropped, _ = kernels.sum_by_latent(w[:1, keep], rows[:1, keep], cols[:1, keep], T[:1], d_sae)
    torch.testing.assert_close(out[:1], dropped, **TIGHT)


def test_sums_run_in_entry_order():
    """decode's and sum_by_latent's sums run in entry order (what makes a seed's result independent
    of the seeds trained beside it): three entries 1, 1e8, -1e8 at one output row sum to 0 in float32
    in that order ((1 + 1e8) - 1e8) and to 1 in any order that adds the two large ones first. The
    index_add_ references sum in entry order too."""
    z = torch.tensor([[1.0, 1e8, -1e8, 3.0]])
    rows = torch.tensor([[0, 0, 0, 1]])
    cols = torch.tensor([[0, 1, 2, 1]])
    ones = torch.ones(1, 3, 4)
    out = kernels.sparse_decode(z, rows, cols, ones, 2)
    torch.testing.assert_close(out, _ref_decode(z, rows, cols, ones, 2), rtol=0, atol=0)
    assert not bool(out[0, 0].any()) and bool((out[0, 1] == 3).all())
    by_latent, bias = kernels.sum_by_latent(z, cols, rows, ones[:, :3], 2, with_bias=True)  # latent = rows here
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
    sum_by_latent and decode_backward give bitwise the same results on 1, 2 and 3 threads (the number
    of output ranges per seed, kernels._parts, changes with the thread count)."""
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
        return [*kernels.topk_rows(x, k, bias), *kernels.topk_among(x, allowed, k, above=0.0, bias=bias),
                kernels.sparse_decode(z, rows // 2, cols, W, R), *kernels.sum_by_latent(z, rows, cols, T, d_sae, True),
                *kernels.decode_backward(z, rows % R, cols, T, W), *kernels.decode_backward(z, rows % R, cols, T, W, True)]

    results = {}
    for n in (1, 2, 3):
        with _threads(n):
            assert torch.get_num_threads() == n
            results[n] = run()
    for n in (2, 3):
        for a, b in zip(results[1], results[n]):
            assert torch.equal(a, b)


def test_wrappers_reject_a_k_the_kernels_cannot_take():
    """k outside [1, d] would divide by zero or read past a row in kernels.c: the wrappers refuse it."""
    x = torch.randn(2, 3, 10)
    for k in (0, 11):
        with pytest.raises(ValueError, match="k must be"):
            kernels.topk_rows(x, k)
    with pytest.raises(ValueError, match="k must be"):
        kernels.topk_among(x, torch.ones(2, 10, dtype=torch.bool), 0)


@pytest.mark.parametrize("skip_zero", [False, True])
def test_decode_backward_weight_gradient_is_sum_by_latent(skip_zero):
    """decode_backward's W gradient is sum_by_latent(z, ..., G) (checked above against a slow
    reference) bitwise, with zero entries in z, and both outputs are independent of the thread count."""
    g = _gen(11)
    S, M, R, d_sae, d_in = 3, 400, 20, 64, 24
    rows = torch.randint(0, R, (S, M), generator=g).sort(1).values
    cols = torch.randint(0, d_sae, (S, M), generator=g)
    z = torch.randn(S, M, generator=g)
    z[torch.rand(S, M, generator=g) < 0.3] = 0.0
    G, W = torch.randn(S, R, d_in, generator=g), torch.randn(S, d_sae, d_in, generator=g)
    want_W = kernels.sum_by_latent(z, rows, cols, G, d_sae)[0]
    want_z = torch.stack([(G[s, rows[s]].double() * W[s, cols[s]].double()).sum(-1) for s in range(S)]).float()
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


def test_plain_c_build_passes_the_same_checks(tmp_path):
    """kernels.c has AVX-512 code (the candidates' compaction, the group maxima, the k-th maximum by
    counting) and plain C for every other CPU; -march=native on an AVX-512 machine builds only the
    first. The selection, sum and thread tests of this file again, in a process whose library is
    built for x86-64-v3 (AVX2, no AVX-512; on other CPUs their baseline), so both paths are checked."""
    import platform

    march = "x86-64-v3" if platform.machine().lower() in ("x86_64", "amd64") else "armv8-a"
    env = dict(os.environ, HUSAI_KERNELS_MARCH=march, HUSAI_CACHE=str(tmp_path))
    env.pop("HUSAI_KERNELS", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "topk or among or decode or sum_by_latent or thread"],
                          env=env, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    passed = int(proc.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 30, proc.stdout[-500:]
    assert len(list(tmp_path.glob("kernels-*.so"))) == 1  # built there, for that -march
