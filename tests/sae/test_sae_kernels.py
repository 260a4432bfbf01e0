"""The compiled CPU kernels (husai/sae/kernels.c through husai.sae.kernels) against slow references
written here: the top-k selections (canonical order: larger value first, then lower column; columns
out increasing), and the kernel tests of this file, test_sae_kernels_sums.py (the sparse gathers and
sums, the decoder-constraint helpers, thread-count invariance) and test_sae_kernels_step.py (the
loss and the one-call TopK step) again against a build without AVX-512. Training with them,
KernelAdam and the build's failure and cache behaviour: test_sae_kernels_in_use.py."""

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
    assert kernels.library() is not None, (
        "the compiled kernels did not load (is a C compiler installed?)"
    )


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


@pytest.mark.parametrize(
    "rows,d,k",
    [(48, 2048, 32), (40, 300, 7), (40, 50, 20), (40, 40, 30), (30, 64, 1), (20, 24, 24)],
)
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
    x[3, [3, 40]] = torch.tensor(
        [2.0, 1.0]
    )  # two real values, then NaNs (lowest columns) fill the rest
    x[4, :] = float("nan")  # all NaN: the first k columns
    x[5, : d - 3] = float("nan")
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
    return torch.tensor(vals).view(S, B, width), torch.tensor(idx, dtype=torch.long).view(
        S, B, width
    )


def _allowed(S, d, counts, g):
    """allowed [S, d] with counts[s] random allowed columns in seed s."""
    allowed = torch.zeros(S, d, dtype=torch.bool)
    for s, n in enumerate(counts):
        allowed[s, torch.randperm(d, generator=g)[:n]] = True
    return allowed


@pytest.mark.parametrize("above", [-INF, 0.0])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize(
    "counts,k,pad_col",
    [
        ((120, 5, 0, 60), 8, 0),  # a seed with fewer allowed columns than k, one with none
        ((30, 30, 30, 30), 12, 0),  # every seed fills k (n < 2k once above = 0 drops half)
        (
            (3, 0, 2, 1),
            8,
            3,
        ),  # every seed short of k: k' trimmed to the largest count; padding at column 3
        ((0, 0, 0, 0), 4, 0),  # nothing allowed anywhere: one column of padding
    ],
)
def test_topk_among(above, layout, with_bias, counts, k, pad_col):
    """The top k among each seed's allowed columns with values > above (AuxK's search among the
    dead latents, above = 0), in both memory layouts and with a bias: the reference's columns and
    values, padding (-inf at pad_col) behind the real entries, the last dim trimmed to the largest
    real count. Some entries are -inf, which with above = -inf must still be left out."""
    S, B, d = 4, 6, 200
    g = _gen(sum(counts) * 31 + k)
    pre = (
        torch.randn(S, B, d, generator=g)
        if layout == "contiguous"
        else torch.randn(B, S, d, generator=g).transpose(0, 1)
    )
    pre[torch.rand(S, B, d, generator=g) < 0.1] = -INF
    allowed = _allowed(S, d, counts, g)
    bias = torch.randn(S, d, generator=g) * 0.5 if with_bias else None
    vals, idx = kernels.topk_among(pre, allowed, k, above=above, bias=bias, pad_col=pad_col)
    ref_vals, ref_idx = _ref_topk_among(pre, allowed, k, above, bias, pad_col)
    assert idx.shape == ref_idx.shape
    assert torch.equal(idx, ref_idx)
    _assert_same(vals, ref_vals)


# ---------------------------------------------------------- the wrappers, the build without AVX-512


def test_wrappers_reject_a_k_the_kernels_cannot_take():
    """k outside [1, d] would divide by zero or read past a row in kernels.c: the wrappers refuse
    it."""
    x = torch.randn(2, 3, 10)
    for k in (0, 11):
        with pytest.raises(ValueError, match="k must be"):
            kernels.topk_rows(x, k)
    with pytest.raises(ValueError, match="k must be"):
        kernels.topk_among(x, torch.ones(2, 10, dtype=torch.bool), 0)


def test_plain_c_build_passes_the_same_checks(tmp_path):
    """kernels.c has AVX-512 code (the candidates' compaction, the group maxima, the k-th maximum by
    counting) and plain C for every other CPU; -march=native on an AVX-512 machine builds only the
    first. The selection, sum, step and thread tests again, in a process whose library is built for
    x86-64-v3 (AVX2, no AVX-512; on other CPUs their baseline), so both paths are checked."""
    import platform

    march = "x86-64-v3" if platform.machine().lower() in ("x86_64", "amd64") else "armv8-a"
    env = dict(os.environ, HUSAI_KERNELS_MARCH=march, HUSAI_CACHE=str(tmp_path))
    env.pop("HUSAI_KERNELS", None)
    here = Path(__file__).parent
    files = [str(here / f"test_sae_kernels{part}.py") for part in ("", "_sums", "_step")]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            *files,
            "-k",
            "topk or among or decode or sum_by_latent or thread or fvu",
        ],
        env=env,
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    passed = int(proc.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 70, proc.stdout[-500:]  # 77 selected: the three files
    assert len(list(tmp_path.glob("kernels-*.so"))) == 1  # built there, for that -march
