"""Compiled CPU kernels for the sparse SAE step (kernels.c, step.c), called through ctypes.

The step's selection (top-k, AuxK's top-k among dead latents) and its sparse gathers and sums
(decode, the gradient of the entry values, the weight gradients by latent) were each one or
several ATen kernels plus bookkeeping (sorts by latent, bincounts, prefix sums): about half of a
5-seed TopK step on 2 CPU cores (profiled, BENCHMARKS.md). kernels.c does each in one pass.
husai.sae.kernel_build builds, caches and binds the library; without it (no compiler, or
HUSAI_KERNELS=off) husai.sae.sparse runs its PyTorch path (same selections, sums in another order).

Every function takes float32 / int64 CPU tensors and returns new ones (the two ending in _ work in
place); callers check `usable`. Entry lists (rows, cols) must index inside their tables, as
husai.sae.sparse.Codes builds them: the kernels do not check (a check is a pass over the list)
unless HUSAI_KERNELS_CHECK=1, which the test suite sets.
"""

from __future__ import annotations

import math
import os

import torch

from husai.sae.kernel_build import library

__all__ = ["library", "usable", "checking"]


def checking() -> bool:
    """HUSAI_KERNELS_CHECK=1 (the test suite sets it): every entry list handed to a kernel is
    range-checked first (rows and columns inside their tables, rows sorted where a kernel relies on
    it). Off by default: a check is one more pass over the list."""
    return os.environ.get("HUSAI_KERNELS_CHECK", "") not in ("", "0")


def _check_entries(
    name: str,
    rows: torch.Tensor,
    cols: torch.Tensor,
    d_sae: int,
    R: int | None,
    sorted_rows: bool,
    *same_shape: torch.Tensor,
) -> None:
    if not checking():
        return
    if rows.shape != cols.shape or rows.ndim != 2 or any(t.shape != rows.shape for t in same_shape):
        raise ValueError(
            f"kernels.{name}: entry lists of shapes "
            f"{[tuple(t.shape) for t in (rows, cols, *same_shape)]}"
        )
    if rows.numel() == 0:
        return
    if int(cols.min()) < 0 or int(cols.max()) >= d_sae:
        raise ValueError(f"kernels.{name}: a column outside [0, {d_sae})")
    if int(rows.min()) < 0 or (R is not None and int(rows.max()) >= R):
        raise ValueError(f"kernels.{name}: a row outside [0, {R if R is not None else 'inf'})")
    if sorted_rows and bool((rows[:, 1:] < rows[:, :-1]).any()):
        raise ValueError(f"kernels.{name}: rows not sorted within a seed")


def usable(*tensors: torch.Tensor) -> bool:
    """The kernels apply: the library loads and every tensor is on the CPU, floats float32."""
    return (
        all(
            t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point())
            for t in tensors
        )
        and library() is not None
    )


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


def _threads() -> int:
    return torch.get_num_threads()


def topk_rows(
    x: torch.Tensor, k: int, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., d] float32 -> (values, columns) [..., k]: each row's k largest, ties to the lower
    column, columns increasing. A NaN never outranks a number (where fewer than k are not NaN, NaNs
    fill up as -inf would; training stops at the first non-finite loss anyway). bias [S, d] (x then
    [S, B, d] or pre_acts' [B, S, d] view): of x + bias[s] instead, without writing it out."""
    if x.ndim == 3 and not x.is_contiguous() and x.transpose(0, 1).is_contiguous():
        mem, seed_major = x.transpose(0, 1), False  # pre_acts' [B, S, d] memory
    else:
        mem, seed_major = x.contiguous(), True
    d = x.shape[-1]
    if not 1 <= k <= d:
        raise ValueError(f"topk_rows: k must be in [1, {d}], got {k}")
    S, B = (x.shape[0], x.shape[1]) if x.ndim == 3 else (1, 1)
    if bias is not None:
        assert x.ndim == 3 and bias.shape == (S, d)
        bias = bias.detach().contiguous()
    vals = torch.empty(*mem.shape[:-1], k, dtype=x.dtype)
    idx = torch.empty(*mem.shape[:-1], k, dtype=torch.long)
    library().topk_rows(
        _p(mem),
        mem.numel() // d,
        d,
        k,
        None if bias is None else _p(bias),
        S,
        B,
        int(seed_major),
        _p(vals),
        _p(idx),
        _threads(),
    )
    return (vals, idx) if seed_major else (vals.transpose(0, 1), idx.transpose(0, 1))


def topk_among(
    pre: torch.Tensor,
    allowed: torch.Tensor,
    k: int,
    above: float = float("-inf"),
    bias: torch.Tensor | None = None,
    pad_col: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """pre [S, B, d] (contiguous, or the [B, S, d]-in-memory view pre_acts returns), allowed [S, d]
    bool -> (values, columns) [S, B, k']: each row's k largest among its seed's allowed columns
    whose values are > above (ties to the lower column, columns increasing), then padding (value
    -inf at column pad_col) where a row has fewer; k' <= k is the most any row has (the rest would
    be padding). bias [S, d]: of pre + bias[s] instead (as topk_rows)."""
    S, B, d = pre.shape
    if k < 1:
        raise ValueError(f"topk_among: k must be >= 1, got {k}")
    k = min(k, d)
    seed_major = pre.is_contiguous()
    mem = pre if seed_major else pre.transpose(0, 1).contiguous()  # [S, B, d] or [B, S, d]
    allowed = allowed.to(torch.bool).contiguous()
    vals = torch.empty(*mem.shape[:2], k, dtype=pre.dtype)
    idx = torch.empty(*mem.shape[:2], k, dtype=torch.long)
    bias = None if bias is None else bias.detach().contiguous()
    widest = library().topk_among(
        _p(mem),
        S * B,
        d,
        k,
        _p(allowed),
        S,
        B,
        int(seed_major),
        None if bias is None else _p(bias),
        above,
        pad_col,
        _p(vals),
        _p(idx),
        _threads(),
    )
    kk = max(1, widest)  # each row's real entries come first
    vals, idx = vals[..., :kk], idx[..., :kk]
    return (vals, idx) if seed_major else (vals.transpose(0, 1), idx.transpose(0, 1))


def _parts(S: int) -> int:
    """Output ranges per seed: S * parts a multiple of the thread count (as many tasks on every
    thread), unless that is more than ~4 a thread (S = 17 on 16 threads), then ~4 a thread. More
    than needed cost: a task of the by-latent sums reads its seed's whole entry list (one seed, 2
    threads, 24k entries: decode + its backward + the encoder sums 0.70 ms with 8 parts, 0.45 ms
    with 2, measured)."""
    t = _threads()
    return min(t // math.gcd(S, t), max(1, -(-4 * t // S)))


def sparse_decode(
    z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, W: torch.Tensor, R: int
) -> torch.Tensor:
    """z, rows, cols [S, M] (each seed's rows non-decreasing, as Codes has them); W [S, d_sae, d_in]
    -> out [S, R, d_in]: out[s, r] = sum_{rows = r} z W[s, cols]."""
    S, M = z.shape
    _, d_sae, d_in = W.shape
    _check_entries("sparse_decode", rows, cols, d_sae, R, True, z)
    z, rows, cols, W = z.contiguous(), rows.contiguous(), cols.contiguous(), W.contiguous()
    out = torch.empty(S, R, d_in, dtype=W.dtype)
    library().sparse_decode(
        _p(z), _p(rows), _p(cols), _p(W), S, M, d_sae, d_in, R, _p(out), _parts(S), _threads()
    )
    return out


def sum_by_latent(
    w: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    T: torch.Tensor,
    d_sae: int,
    with_bias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """w, rows, cols [S, M]; T [S, R, d_in] -> (out [S, d_sae, d_in]:
    out[s, j] = sum_{cols = j} w T[s, rows mod R], and with_bias the sums of w per latent
    [S, d_sae], else None). Each sum runs in entry order."""
    S, M = w.shape
    R, d_in = T.shape[1:]
    _check_entries("sum_by_latent", rows, cols, d_sae, None, False, w)
    w, rows, cols, T = w.contiguous(), rows.contiguous(), cols.contiguous(), T.contiguous()
    out = torch.empty(S, d_sae, d_in, dtype=T.dtype)
    bias = torch.empty(S, d_sae, dtype=T.dtype) if with_bias else None
    library().sum_by_latent(
        _p(w),
        _p(rows),
        _p(cols),
        _p(T),
        S,
        M,
        d_sae,
        d_in,
        R,
        _p(out),
        None if bias is None else _p(bias),
        _parts(S),
        _threads(),
    )
    return out, bias


def decode_backward(
    z: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    G: torch.Tensor,
    W: torch.Tensor,
    skip_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """sparse_decode's backward, z, rows, cols [S, M], G [S, R, d_in] (the output's gradient),
    W [S, d_sae, d_in] -> (g_W = sum_by_latent(z, rows, cols, G) [S, d_sae, d_in],
    g_z [S, M] = <G[s, rows], W[s, cols]>, 0 where skip_zero and z = 0: a caller whose z came out
    of a relu) in one pass."""
    S, M = z.shape
    _, d_sae, d_in = W.shape
    _check_entries("decode_backward", rows, cols, d_sae, G.shape[1], False, z)
    z, rows, cols, G, W = (
        z.contiguous(),
        rows.contiguous(),
        cols.contiguous(),
        G.contiguous(),
        W.contiguous(),
    )
    g_W = torch.empty(S, d_sae, d_in, dtype=W.dtype)
    g_z = torch.empty(S, M, dtype=W.dtype)
    library().decode_backward(
        _p(z),
        _p(rows),
        _p(cols),
        _p(G),
        _p(W),
        S,
        M,
        d_sae,
        d_in,
        G.shape[1],
        int(skip_zero),
        _p(g_W),
        _p(g_z),
        _parts(S),
        _threads(),
    )
    return g_W, g_z


def weighted_row_sum(w: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """w [S, d_sae], W [S, d_sae, d_in] -> [S, d_in]: sum_j w[s, j] W[s, j] (zero weights
    skipped)."""
    S, d_sae, d_in = W.shape
    w, W = w.contiguous(), W.contiguous()
    out = torch.empty(S, d_in, dtype=W.dtype)
    library().weighted_row_sum(_p(w), _p(W), S, d_sae, d_in, _p(out), _threads())
    return out


def remove_parallel_(G: torch.Tensor, W: torch.Tensor) -> None:
    """In place, rows of the last dim: G -= <G, W> W (W's rows unit). Both contiguous."""
    assert G.is_contiguous() and W.is_contiguous() and G.shape == W.shape
    library().remove_parallel(_p(G), _p(W), G.numel() // G.shape[-1], G.shape[-1], _threads())


def normalize_rows_(W: torch.Tensor, eps: float) -> None:
    """In place, rows of the last dim: W /= max(||W||, eps). W contiguous."""
    assert W.is_contiguous()
    library().normalize_rows(_p(W), W.numel() // W.shape[-1], W.shape[-1], eps, _threads())


def adam_rows_(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step_size: float,
    betas: tuple[float, float],
    eps: float,
    bc2_sqrt: float,
    constrain: bool,
) -> None:
    """In place: one torch.optim.Adam step on p (rows of the last dim) with its state m, v;
    constrain: the decoder's unit rows, the parallel gradient removed before the step and the rows
    renormalised after it (kernels.c adam_rows). All four contiguous, one shape."""
    assert all(t.is_contiguous() and t.shape == p.shape for t in (g, m, v))
    d = p.shape[-1] if p.ndim else 1
    library().adam_rows(
        _p(p),
        _p(g),
        _p(m),
        _p(v),
        p.numel() // d,
        d,
        step_size,
        betas[0],
        betas[1],
        eps,
        bc2_sqrt,
        int(constrain),
        _threads(),
    )


def fvu_loss(
    out: torch.Tensor,
    b_dec: torch.Tensor,
    x: torch.Tensor,
    levels: int,
    aux_on: torch.Tensor | None,
    aux_coeff: float,
) -> tuple[torch.Tensor, ...]:
    """The TopK family's loss from the step's one sparse decode (step.c fvu_loss has the formulas):
    out [S, (levels + aux) B, d] (no b_dec; AuxK's B rows last when aux_on [S] bool is given, True
    for the seeds with a dead latent), b_dec [S, d], x [B, d] or [S, B, d] -> (loss, mse, var [S],
    g_out [S, (levels + aux) B, d], g_bdec [S, d]): the gradients of loss[s]."""
    S, R, d = out.shape
    B = x.shape[-2]
    out, b_dec, x = out.contiguous(), b_dec.detach().contiguous(), x.contiguous()
    aux = aux_on is not None
    assert R == (levels + aux) * B and b_dec.shape == (S, d) and x.shape[-1] == d
    flags = aux_on.to(torch.int8).contiguous() if aux else None
    loss, mse, var = (torch.empty(S, dtype=torch.float32) for _ in range(3))
    g_out, g_bdec = torch.empty_like(out), torch.empty(S, d, dtype=torch.float32)
    library().fvu_loss(
        _p(out),
        _p(b_dec),
        _p(x),
        B * d if x.ndim == 3 else 0,
        S,
        B,
        d,
        levels,
        int(aux),
        None if flags is None else _p(flags),
        aux_coeff,
        _p(loss),
        _p(mse),
        _p(var),
        _p(g_out),
        _p(g_bdec),
        _threads(),
    )
    return loss, mse, var, g_out, g_bdec


def topk_step(
    pre: torch.Tensor,
    bias: torch.Tensor,
    x: torch.Tensor,
    W_enc_T: torch.Tensor,
    b_dec: torch.Tensor,
    W_dec: torch.Tensor,
    dead: torch.Tensor,
    ks: list[int],
    k_aux: int,
    aux_coeff: float,
) -> dict:
    """The sparse part of a TopK training step in one call (step.c topk_step): pre [S, B, d_sae] the
    encoder matmul without its bias (contiguous, or pre_acts' [B, S, d_sae]-in-memory view),
    bias [S, d_sae], x [B, d_in] or [S, B, d_in], W_enc_T, W_dec [S, d_sae, d_in], b_dec [S, d_in],
    dead [S, d_sae] bool, ks [S] each seed's k -> dict of loss, mse, var, l0 [S], fired [S, d_sae]
    bool, and the gradients of every loss[s]: W_enc_T, b_enc, b_dec, W_dec."""
    S, B, d_sae = pre.shape
    d_in = W_dec.shape[-1]
    seed_major = pre.is_contiguous()
    mem = pre if seed_major else pre.transpose(0, 1)
    assert mem.is_contiguous() and len(ks) == S
    if not (1 <= min(ks) and max(ks) <= d_sae and k_aux >= 1):
        raise ValueError(
            f"topk_step: every k must be in [1, {d_sae}] and k_aux >= 1, got {ks}, {k_aux}"
        )
    W_enc_T, W_dec, b_dec, bias = (t.detach().contiguous() for t in (W_enc_T, W_dec, b_dec, bias))
    x, dead, ks = (
        x.contiguous(),
        dead.to(torch.bool).contiguous(),
        torch.tensor(ks, dtype=torch.int32),
    )
    f32 = torch.float32
    f = dict(
        loss=torch.empty(S, dtype=f32),
        mse=torch.empty(S, dtype=f32),
        var=torch.empty(S, dtype=f32),
        l0=torch.empty(S, dtype=f32),
        fired=torch.empty(S, d_sae, dtype=torch.bool),
        W_enc_T=torch.empty_like(W_enc_T),
        b_enc=torch.empty(S, d_sae, dtype=f32),
        b_dec=torch.empty_like(b_dec),
        W_dec=torch.empty_like(W_dec),
    )
    library().topk_step(
        _p(mem),
        int(seed_major),
        _p(bias),
        _p(x),
        B * d_in if x.ndim == 3 else 0,
        _p(W_enc_T),
        _p(b_dec),
        _p(W_dec),
        _p(dead),
        _p(ks),
        S,
        B,
        d_sae,
        d_in,
        k_aux,
        aux_coeff,
        *(
            _p(f[n])
            for n in ("loss", "mse", "var", "l0", "fired", "W_enc_T", "b_enc", "b_dec", "W_dec")
        ),
        _parts(S),
        _threads(),
    )
    return f
