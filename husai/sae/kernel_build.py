"""Building, caching and binding husai's compiled CPU kernels (kernels.c, step.c; their wrappers are
husai.sae.kernels).

The library is built on first use with the system C compiler (`cc`, or $CC) into a cache keyed by
the sources, the flags, the compiler (path, size, mtime) and the CPU (`-march=native`): $HUSAI_CACHE
or ~/.cache/husai when this user owns it and no one else may write it, else a private temporary
directory; a build prunes the cache's builds of other sources. No compiler, or a failed build: one
warning, and `library()` is None (husai.sae.sparse then runs its PyTorch path). HUSAI_KERNELS=off
forces that.

The C signatures are written once, in kernels.h's entry-point block: `Kernels` binds every entry
point from it and refuses a call with the wrong number of arguments, and the build's
-Werror=missing-prototypes with the header included makes the compiler hold the definitions to it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCES = [
    Path(__file__).with_name(n) for n in ("kernels.c", "step.c")
]  # compiled into one library
HEADER = Path(__file__).with_name("kernels.h")
FLAGS = [
    "-O3",
    "-fno-math-errno",
    "-fopenmp",
    "-shared",
    "-fPIC",
    "-std=c11",
]  # no errno: sqrtf vectorises


def _flags() -> list[str]:
    """FLAGS for this CPU: -march=native, or $HUSAI_KERNELS_MARCH (the tests build an AVX2-only
    x86-64-v3 library on an AVX-512 machine to check the kernels' non-AVX-512 code)."""
    return [*FLAGS, f"-march={os.environ.get('HUSAI_KERNELS_MARCH') or 'native'}"]


_lib: Kernels | None | bool = False  # False: not tried yet; None: unavailable


def _cpu_id() -> str:
    try:
        return next(
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
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
    """Where the library is looked for and built, in order: $HUSAI_CACHE or ~/.cache/husai, if this
    user owns it and no one else may write it (a library found there is loaded into the process: it
    must not be one another user could have put there); when it is not, or cannot be created or
    written, a directory of the system's temporary one that is private in the same way."""
    try:
        home = Path(
            os.environ.get("HUSAI_CACHE")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "husai"
        )
        home.mkdir(parents=True, exist_ok=True)
        if not _private(home):
            warnings.warn(
                f"husai: kernel cache {home} is not private to this user (owner or mode); using a "
                "private temporary directory",
                stacklevel=4,
            )
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
    """(the library's file name, its source part): `kernels-SRC-BUILD.so`, SRC a hash of the C
    sources, BUILD of the flags, the compiler (its resolved path, size and mtime: `cc --version`
    would cost a process start in every husai process) and the CPU."""
    src = hashlib.sha256("\0".join(p.read_text() for p in (*SOURCES, HEADER)).encode()).hexdigest()[
        :12
    ]
    st = os.stat(cc)
    build = "\0".join(
        [*_flags(), os.path.realpath(cc), str(st.st_size), str(st.st_mtime_ns), _cpu_id()]
    )
    return f"kernels-{src}-{hashlib.sha256(build.encode()).hexdigest()[:8]}.so", f"kernels-{src}-"


def _prune(d: Path, keep_prefix: str) -> None:
    """Delete the builds of other sources in `d` (older husai versions); builds of these sources for
    other flags or compilers stay (the tests build an x86-64-v3 one beside the native one)."""
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
            fd, tmp = tempfile.mkstemp(
                suffix=".so", dir=d
            )  # built beside, renamed in: concurrent builds are safe
        except OSError:
            continue
        os.close(fd)
        try:
            proc = subprocess.run(
                [cc, *_flags(), "-Werror=missing-prototypes", *map(str, SOURCES), "-o", tmp, "-lm"],
                capture_output=True,
                text=True,
                timeout=300,
            )
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
        raise RuntimeError(
            "no usable cache directory (~/.cache/husai or $HUSAI_CACHE, or a private temporary one)"
        )
    return Kernels(ctypes.CDLL(str(path)))


_CTYPES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "float": ctypes.c_float}


def entry_points(header: str | None = None) -> dict[str, tuple[type | None, list[type]]]:
    """kernels.h's entry-point block -> {name: (restype, argtypes)} in ctypes terms: a pointer is
    c_void_p, int, int64_t and float their ctypes; the one place the C signatures are written
    down."""
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
    garbage): a wrapper that drifts from the C side raises TypeError instead of corrupting
    memory."""

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


def library() -> Kernels | None:
    """The loaded kernels, built on first call; None when HUSAI_KERNELS=off or the build failed."""
    global _lib
    if os.environ.get("HUSAI_KERNELS", "").lower() == "off":
        return None
    if _lib is False:
        try:
            _lib = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            warnings.warn(
                f"husai: compiled CPU kernels unavailable ({e}); using the slower PyTorch path",
                stacklevel=2,
            )
            _lib = None
    return _lib
