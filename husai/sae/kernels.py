"""Compiled CPU kernels for the sparse SAE step (kernels.c, step.c), loaded through ctypes.

The step's selection (top-k, AuxK's top-k among dead latents) and its sparse gathers and sums
(decode, the gradient of the entry values, the weight gradients by latent) were each one or
several ATen kernels plus bookkeeping (sorts by latent, bincounts, prefix sums): about half of a
5-seed TopK step on 2 CPU cores (profiled, BENCHMARKS.md). kernels.c does each in one pass.

Built on first use with the system C compiler (`cc`, or $CC) into a cache keyed by the sources,
the flags, the compiler (path, size, mtime) and the CPU (`-march=native`): $HUSAI_CACHE or
~/.cache/husai when this user owns it and no one else may write it, else a private temporary
directory; a build prunes the cache's builds of other sources. No compiler, or a failed build: one
warning, and husai.sae.sparse runs its PyTorch path (same selections, sums in another order).
HUSAI_KERNELS=off forces that path (the tests compare the two).

The C signatures are written once, in kernels.h's entry-point block; `Kernels` binds every entry
point from it and refuses a call with the wrong number of arguments. Every function takes float32 /
int64 CPU tensors and returns new ones (the two ending in _ work in place); callers check `usable`.
Entry lists (rows, cols) must index inside their tables, as husai.sae.sparse.Codes builds them: the
kernels do not check (a check is a pass over the list) unless HUSAI_KERNELS_CHECK=1, which the test
suite sets.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import math
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCES = [Path(__file__).with_name(n) for n in ("kernels.c", "step.c")]  # compiled into one library
HEADER = Path(__file__).with_name("kernels.h")
FLAGS = ["-O3", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c11"]  # no errno: sqrtf vectorises


def _flags() -> list[str]:
    """FLAGS for this CPU: -march=native, or $HUSAI_KERNELS_MARCH (the tests build an AVX2-only
    x86-64-v3 library on an AVX-512 machine to check the kernels' non-AVX-512 code)."""
    return [*FLAGS, f"-march={os.environ.get('HUSAI_KERNELS_MARCH') or 'native'}"]
_lib: Kernels | None | bool = False  # False: not tried yet; None: unavailable


def _cpu_id() -> str:
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        import platform

        return platform.machine() + platform.processor()


def _private(path: Path) -> bool:
    """Owned by this user and writable by no one else: safe to load a library from."""
    if not hasattr(os, "getuid"):
        return True
    st = path.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _cache_dirs():
    """Where the library is looked for and built, in order: $HUSAI_CACHE or ~/.cache/husai, if this user
    owns it and no one else may write it (a library found there is loaded into the process: it must
    not be one another user could have put there); when it is not, or cannot be created or written, a
    directory of the system's temporary one that is private in the same way."""
    try:
        home = Path(os.environ.get("HUSAI_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "husai")
        home.mkdir(parents=True, exist_ok=True)
        if not _private(home):
            warnings.warn(f"husai: kernel cache {home} is not private to this user (owner or mode); using a private "
                          "temporary directory", stacklevel=4)
            home = None
    except (OSError, RuntimeError):  # not creatable, or no home directory
        home = None
    if home is not None:
        yield home  # a library already there is loaded even if the directory is read-only
        if os.access(home, os.W_OK):
            return
    uid = os.getuid() if hasattr(os, "getuid") else None
    private = Path(tempfile.gettempdir()) / f"husai-kernels-{uid}"
    try:
        private.mkdir(mode=0o700, exist_ok=True)
        if _private(private):
            yield private
    except OSError:
        return


def _names(cc: str) -> tuple[str, str]:
    """(the library's file name, its source part): `kernels-SRC-BUILD.so`, SRC a hash of the C sources,
    BUILD of the flags, the compiler (its resolved path, size and mtime: `cc --version` would cost a
    process start in every husai process) and the CPU."""
    src = hashlib.sha256("\0".join(p.read_text() for p in (*SOURCES, HEADER)).encode()).hexdigest()[:12]
    st = os.stat(cc)
    build = "\0".join([*_flags(), os.path.realpath(cc), str(st.st_size), str(st.st_mtime_ns), _cpu_id()])
    return f"kernels-{src}-{hashlib.sha256(build.encode()).hexdigest()[:8]}.so", f"kernels-{src}-"


def _prune(d: Path, keep_prefix: str) -> None:
    """Delete the builds of other sources in `d` (older husai versions); builds of these sources for other
    flags or compilers stay (the tests build an x86-64-v3 one beside the native one)."""
    for old in d.glob("kernels-*.so"):
        if not old.name.startswith(keep_prefix):
            with contextlib.suppress(OSError):
                old.unlink()  # a process that has it loaded keeps its mapping


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc) found")
    cc = shutil.which(cc) or cc
    name, prefix = _names(cc)
    for d in _cache_dirs():
        if (d / name).exists() and _private(d / name):
            path = d / name
            break
        try:
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=d)  # built beside, renamed in: concurrent builds are safe
        except OSError:
            continue
        os.close(fd)
        try:
            proc = subprocess.run([cc, *_flags(), "-Werror=missing-prototypes", *map(str, SOURCES), "-o", tmp, "-lm"],
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode:
                last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                raise RuntimeError(f"{cc} failed: {last}")
            os.replace(tmp, d / name)
            path = d / name
            _prune(d, prefix)
            break
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        raise RuntimeError("no usable cache directory (~/.cache/husai or $HUSAI_CACHE, or a private temporary one)")
    return Kernels(ctypes.CDLL(str(path)))


_CTYPES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "float": ctypes.c_float}


def entry_points(header: str | None = None) -> dict[str, tuple[type | None, list[type]]]:
    """kernels.h's entry-point block -> {name: (restype, argtypes)} in ctypes terms: a pointer is c_void_p,
    int, int64_t and float their ctypes; the one place the C signatures are written down."""
    text = HEADER.read_text() if header is None else header
    block = text.split("/* BEGIN ENTRY POINTS */")[1].split("/* END ENTRY POINTS */")[0]
    out = {}
    for decl in filter(None, (" ".join(d.split()) for d in block.split(";"))):
        m = re.fullmatch(r"(\w+) (\w+)\((.*)\)", decl)
        if not m:
            raise ValueError(f"kernels.h: cannot read the declaration {decl!r}")
        ret, name, params = m.groups()
        args = []
        for param in params.split(","):
            words = param.replace("const ", "").replace("*", " * ").split()
            args.append(ctypes.c_void_p if "*" in words else _CTYPES[words[0]])
        out[name] = (None if ret == "void" else _CTYPES[ret], args)
    return out


class Kernels:
    """The loaded library's entry points, each bound with kernels.h's signature and called through a
    check of the argument count (ctypes itself accepts extra arguments, and a missing one would read
    garbage): a wrapper that drifts from the C side raises TypeError instead of corrupting memory."""

    def __init__(self, lib: ctypes.CDLL):
        for name, (restype, argtypes) in entry_points().items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, _checked(name, fn, len(argtypes)))


def _checked(name: str, fn, n: int):
    def call(*args):
        if len(args) != n:
            raise TypeError(f"kernels.{name} takes {n} arguments (kernels.h), got {len(args)}")
        return fn(*args)
    return call


def checking() -> bool:
    """HUSAI_KERNELS_CHECK=1 (the test suite sets it): every entry list handed to a kernel is range-checked
    first (rows and columns inside their tables, rows sorted where a kernel relies on it). Off by
    default: a check is one more pass over the list."""
    return os.environ.get("HUSAI_KERNELS_CHECK", "") not in ("", "0")


def _check_entries(name: str, rows: torch.Tensor, cols: torch.Tensor, d_sae: int, R: int | None, sorted_rows: bool,
                   *same_shape: torch.Tensor) -> None:
    if not checking():
        return
    if rows.shape != cols.shape or rows.ndim != 2 or any(t.shape != rows.shape for t in same_shape):
        raise ValueError(f"kernels.{name}: entry lists of shapes {[tuple(t.shape) for t in (rows, cols, *same_shape)]}")
    if rows.numel() == 0:
        return
    if int(cols.min()) < 0 or int(cols.max()) >= d_sae:
        raise ValueError(f"kernels.{name}: a column outside [0, {d_sae})")
    if int(rows.min()) < 0 or (R is not None and int(rows.max()) >= R):
        raise ValueError(f"kernels.{name}: a row outside [0, {R if R is not None else 'inf'})")
    if sorted_rows and bool((rows[:, 1:] < rows[:, :-1]).any()):
        raise ValueError(f"kernels.{name}: rows not sorted within a seed")


def library() -> Kernels | None:
    """The loaded kernels, built on first call; None when HUSAI_KERNELS=off or the build failed."""
    global _lib
    if os.environ.get("HUSAI_KERNELS", "").lower() == "off":
        return None
    if _lib is False:
        try:
            _lib = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            warnings.warn(f"husai: compiled CPU kernels unavailable ({e}); using the slower PyTorch path", stacklevel=2)
            _lib = None
    return _lib


def usable(*tensors: torch.Tensor) -> bool:
    """The kernels apply: the library loads and every tensor is on the CPU, floats float32."""
    return all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.is_floating_point()) for t in tensors) \
        and library() is not None


def _p(t: torch.Tensor) -> int:
    return t.data_ptr()


def _threads() -> int:
    return torch.get_num_threads()


def topk_rows(x: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
    library().topk_rows(_p(mem), mem.numel() // d, d, k, None if bias is None else _p(bias), S, B, int(seed_major),
                        _p(vals), _p(idx), _threads())
    return (vals, idx) if seed_major else (vals.transpose(0, 1), idx.transpose(0, 1))


def topk_among(pre: torch.Tensor, allowed: torch.Tensor, k: int, above: float = float("-inf"),
               bias: torch.Tensor | None = None, pad_col: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """pre [S, B, d] (contiguous, or the [B, S, d]-in-memory view pre_acts returns), allowed [S, d]
    bool -> (values, columns) [S, B, k']: each row's k largest among its seed's allowed columns whose
    values are > above (ties to the lower column, columns increasing), then padding (value -inf at
    column pad_col) where a row has fewer; k' <= k is the most any row has (the rest would be padding).
    bias [S, d]: of pre + bias[s] instead (as topk_rows)."""
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
    widest = library().topk_among(_p(mem), S * B, d, k, _p(allowed), S, B, int(seed_major),
                                  None if bias is None else _p(bias), above, pad_col, _p(vals), _p(idx), _threads())
    kk = max(1, widest)  # each row's real entries come first
    vals, idx = vals[..., :kk], idx[..., :kk]
    return (vals, idx) if seed_major else (vals.transpose(0, 1), idx.transpose(0, 1))


def _parts(S: int) -> int:
    """Output ranges per seed: S * parts a multiple of the thread count (as many tasks on every thread),
    unless that is more than ~4 a thread (S = 17 on 16 threads), then ~4 a thread. More than needed
    cost: a task of the by-latent sums reads its seed's whole entry list (one seed, 2 threads, 24k
    entries: decode + its backward + the encoder sums 0.70 ms with 8 parts, 0.45 ms with 2, measured)."""
    t = _threads()
    return min(t // math.gcd(S, t), max(1, -(-4 * t // S)))


def sparse_decode(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, W: torch.Tensor, R: int) -> torch.Tensor:
    """z, rows, cols [S, M] (each seed's rows non-decreasing, as Codes has them); W [S, d_sae, d_in]
    -> out [S, R, d_in]: out[s, r] = sum_{rows = r} z W[s, cols]."""
    S, M = z.shape
    _, d_sae, d_in = W.shape
    _check_entries("sparse_decode", rows, cols, d_sae, R, True, z)
    z, rows, cols, W = z.contiguous(), rows.contiguous(), cols.contiguous(), W.contiguous()
    out = torch.empty(S, R, d_in, dtype=W.dtype)
    library().sparse_decode(_p(z), _p(rows), _p(cols), _p(W), S, M, d_sae, d_in, R, _p(out), _parts(S), _threads())
    return out


def sum_by_latent(w: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, T: torch.Tensor, d_sae: int,
                  with_bias: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """w, rows, cols [S, M]; T [S, R, d_in] -> (out [S, d_sae, d_in]: out[s, j] = sum_{cols = j} w T[s, rows mod R],
    and with_bias the sums of w per latent [S, d_sae], else None). Each sum runs in entry order."""
    S, M = w.shape
    R, d_in = T.shape[1:]
    _check_entries("sum_by_latent", rows, cols, d_sae, None, False, w)
    w, rows, cols, T = w.contiguous(), rows.contiguous(), cols.contiguous(), T.contiguous()
    out = torch.empty(S, d_sae, d_in, dtype=T.dtype)
    bias = torch.empty(S, d_sae, dtype=T.dtype) if with_bias else None
    library().sum_by_latent(_p(w), _p(rows), _p(cols), _p(T), S, M, d_sae, d_in, R, _p(out),
                            None if bias is None else _p(bias), _parts(S), _threads())
    return out, bias


def decode_backward(z: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, G: torch.Tensor, W: torch.Tensor,
                    skip_zero: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """sparse_decode's backward, z, rows, cols [S, M], G [S, R, d_in] (the output's gradient), W [S, d_sae, d_in]
    -> (g_W = sum_by_latent(z, rows, cols, G) [S, d_sae, d_in], g_z [S, M] = <G[s, rows], W[s, cols]>, 0 where
    skip_zero and z = 0: a caller whose z came out of a relu) in one pass."""
    S, M = z.shape
    _, d_sae, d_in = W.shape
    _check_entries("decode_backward", rows, cols, d_sae, G.shape[1], False, z)
    z, rows, cols, G, W = z.contiguous(), rows.contiguous(), cols.contiguous(), G.contiguous(), W.contiguous()
    g_W = torch.empty(S, d_sae, d_in, dtype=W.dtype)
    g_z = torch.empty(S, M, dtype=W.dtype)
    library().decode_backward(_p(z), _p(rows), _p(cols), _p(G), _p(W), S, M, d_sae, d_in, G.shape[1], int(skip_zero),
                              _p(g_W), _p(g_z), _parts(S), _threads())
    return g_W, g_z


def weighted_row_sum(w: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """w [S, d_sae], W [S, d_sae, d_in] -> [S, d_in]: sum_j w[s, j] W[s, j] (zero weights skipped)."""
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


def adam_rows_(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step_size: float,
               betas: tuple[float, float], eps: float, bc2_sqrt: float, constrain: bool) -> None:
    """In place: one torch.optim.Adam step on p (rows of the last dim) with its state m, v; constrain: the
    decoder's unit rows, the parallel gradient removed before the step and the rows renormalised after it
    (kernels.c adam_rows). All four contiguous, one shape."""
    assert all(t.is_contiguous() and t.shape == p.shape for t in (g, m, v))
    d = p.shape[-1] if p.ndim else 1
    library().adam_rows(_p(p), _p(g), _p(m), _p(v), p.numel() // d, d, step_size, betas[0], betas[1], eps, bc2_sqrt,
                        int(constrain), _threads())


def fvu_loss(out: torch.Tensor, b_dec: torch.Tensor, x: torch.Tensor, levels: int, aux_on: torch.Tensor | None,
             aux_coeff: float) -> tuple[torch.Tensor, ...]:
    """The TopK family's loss from the step's one sparse decode (step.c fvu_loss has the formulas):
    out [S, (levels + aux) B, d] (no b_dec; AuxK's B rows last when aux_on [S] bool is given, True for
    the seeds with a dead latent), b_dec [S, d], x [B, d] or [S, B, d] -> (loss, mse, var [S],
    g_out [S, (levels + aux) B, d], g_bdec [S, d]): the gradients of loss[s]."""
    S, R, d = out.shape
    B = x.shape[-2]
    out, b_dec, x = out.contiguous(), b_dec.detach().contiguous(), x.contiguous()
    aux = aux_on is not None
    assert R == (levels + aux) * B and b_dec.shape == (S, d) and x.shape[-1] == d
    flags = aux_on.to(torch.int8).contiguous() if aux else None
    loss, mse, var = (torch.empty(S, dtype=torch.float32) for _ in range(3))
    g_out, g_bdec = torch.empty_like(out), torch.empty(S, d, dtype=torch.float32)
    library().fvu_loss(_p(out), _p(b_dec), _p(x), B * d if x.ndim == 3 else 0, S, B, d, levels, int(aux),
                       None if flags is None else _p(flags), aux_coeff, _p(loss), _p(mse), _p(var), _p(g_out),
                       _p(g_bdec), _threads())
    return loss, mse, var, g_out, g_bdec


def topk_step(pre: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, W_enc_T: torch.Tensor, b_dec: torch.Tensor,
              W_dec: torch.Tensor, dead: torch.Tensor, ks: list[int], k_aux: int, aux_coeff: float) -> dict:
    """The sparse part of a TopK training step in one call (step.c topk_step): pre [S, B, d_sae] the
    encoder matmul without its bias (contiguous, or pre_acts' [B, S, d_sae]-in-memory view), bias [S, d_sae],
    x [B, d_in] or [S, B, d_in], W_enc_T, W_dec [S, d_sae, d_in], b_dec [S, d_in], dead [S, d_sae] bool,
    ks [S] each seed's k -> dict of loss, mse, var, l0 [S], fired [S, d_sae] bool, and the gradients
    of every loss[s]: W_enc_T, b_enc, b_dec, W_dec."""
    S, B, d_sae = pre.shape
    d_in = W_dec.shape[-1]
    seed_major = pre.is_contiguous()
    mem = pre if seed_major else pre.transpose(0, 1)
    assert mem.is_contiguous() and len(ks) == S
    if not (1 <= min(ks) and max(ks) <= d_sae and k_aux >= 1):
        raise ValueError(f"topk_step: every k must be in [1, {d_sae}] and k_aux >= 1, got {ks}, {k_aux}")
    W_enc_T, W_dec, b_dec, bias = (t.detach().contiguous() for t in (W_enc_T, W_dec, b_dec, bias))
    x, dead, ks = x.contiguous(), dead.to(torch.bool).contiguous(), torch.tensor(ks, dtype=torch.int32)
    f32 = torch.float32
    f = dict(loss=torch.empty(S, dtype=f32), mse=torch.empty(S, dtype=f32), var=torch.empty(S, dtype=f32),
             l0=torch.empty(S, dtype=f32), fired=torch.empty(S, d_sae, dtype=torch.bool),
             W_enc_T=torch.empty_like(W_enc_T), b_enc=torch.empty(S, d_sae, dtype=f32), b_dec=torch.empty_like(b_dec),
             W_dec=torch.empty_like(W_dec))
    library().topk_step(_p(mem), int(seed_major), _p(bias), _p(x), B * d_in if x.ndim == 3 else 0, _p(W_enc_T),
                        _p(b_dec), _p(W_dec), _p(dead), _p(ks), S, B, d_sae, d_in, k_aux, aux_coeff,
                        *(_p(f[n]) for n in ("loss", "mse", "var", "l0", "fired", "W_enc_T", "b_enc", "b_dec", "W_dec")),
                        _parts(S), _threads())
    return f
