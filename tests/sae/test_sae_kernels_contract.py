"""The kernels' contract with Python and their cache: the C signatures are declared once (kernels.h)
and checked on both sides, entry lists are range-checked when HUSAI_KERNELS_CHECK is on (the suite
sets it), and the build cache is private, pruned, and found again without running the compiler."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from test_sae_kernels import _kernels_on  # noqa: F401 (autouse fixture)
from test_sae_kernels_in_use import _check_child_topk, _child

from husai.sae import kernel_build, kernels

P, I, L, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
ENTRY_POINTS = {
    "topk_rows",
    "topk_among",
    "sparse_decode",
    "sum_by_latent",
    "decode_backward",
    "weighted_row_sum",
    "remove_parallel",
    "normalize_rows",
    "adam_rows",
    "fvu_loss",
    "topk_step",
}


def test_the_header_declares_every_entry_point_with_its_ctypes_types():
    """kernels.h's block read by hand for two entry points, and every function kernels.py calls is
    in it."""
    eps = kernel_build.entry_points()
    assert set(eps) == ENTRY_POINTS
    assert eps["topk_rows"] == (None, [P, L, I, I, P, I, L, I, P, P, I])
    assert eps["topk_among"] == (L, [P, L, I, I, P, I, L, I, P, F, L, P, P, I])
    assert len(eps["topk_step"][1]) == 27
    called = set(re.findall(r"library\(\)\.(\w+)\(", Path(kernels.__file__).read_text()))
    assert called == ENTRY_POINTS


def test_a_call_with_the_wrong_argument_count_raises_instead_of_running():
    lib = kernels.library()
    W = torch.randn(4, 8)
    with pytest.raises(TypeError, match="normalize_rows takes 5 arguments"):
        lib.normalize_rows(
            W.data_ptr(), 4, 8, 1e-8
        )  # one short: ctypes alone would read a garbage thread count
    with pytest.raises(TypeError, match="normalize_rows takes 5 arguments"):
        lib.normalize_rows(
            W.data_ptr(), 4, 8, 1e-8, 1, 1
        )  # one too many: ctypes alone would pass it on
    lib.normalize_rows(W.data_ptr(), 4, 8, 1e-8, 1)
    torch.testing.assert_close(W.norm(dim=1), torch.ones(4))


def _compile(src_dir, tmp_path):
    cc = os.environ.get("CC") or shutil.which("cc")
    if cc == "/bin/false":
        cc = shutil.which("cc")
    srcs = [str(src_dir / n) for n in ("kernels.c", "step.c")]
    return subprocess.run(
        [
            cc,
            *kernel_build._flags(),
            "-Werror=missing-prototypes",
            *srcs,
            "-o",
            str(tmp_path / "k.so"),
            "-lm",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("change", ["none", "header_arg", "undeclared_function"])
def test_the_compiler_holds_the_c_side_to_the_header(tmp_path, change):
    """The build flags make the compiler check the definitions against kernels.h: a prototype that
    no longer matches its definition, or an exported function the header does not declare, fails the
    build (which the kernels' loader turns into the PyTorch path with a warning)."""
    src = tmp_path / "src"
    src.mkdir()
    for n in ("kernels.c", "step.c", "kernels.h"):
        shutil.copy(kernel_build.HEADER.with_name(n), src / n)
    if change == "header_arg":
        h = (src / "kernels.h").read_text()
        old = "void normalize_rows(float *W, int64_t n_rows, int d, float eps, int n_threads);"
        assert old in h
        (src / "kernels.h").write_text(
            h.replace(old, old.replace("int n_threads", "int n_threads, int extra"))
        )
    elif change == "undeclared_function":
        with open(src / "step.c", "a") as f:
            f.write("\nint husai_undeclared(int a) { return a + 1; }\n")
    proc = _compile(src, tmp_path)
    if change == "none":
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0
        assert (
            ("conflicting types" in proc.stderr)
            if change == "header_arg"
            else ("missing-prototypes" in proc.stderr)
        )


def test_the_suite_runs_with_entry_checks_on():
    assert kernels.checking()


@pytest.mark.parametrize("bad", ["col_high", "col_negative", "row_high", "rows_unsorted"])
def test_entry_lists_are_range_checked(bad):
    """With HUSAI_KERNELS_CHECK on, an entry list that would read or write outside its table raises
    a ValueError naming the kernel, before any C code runs."""
    S, M, d_sae, d_in, R = 2, 6, 10, 4, 3
    rows = torch.tensor([[0, 0, 1, 1, 2, 2]] * S)
    cols = torch.tensor([[1, 3, 0, 9, 2, 5]] * S)
    z, W = torch.rand(S, M), torch.randn(S, d_sae, d_in)
    if bad == "col_high":
        cols[1, 2] = d_sae
    elif bad == "col_negative":
        cols[0, 0] = -1
    elif bad == "row_high":
        rows[1, 5] = R
    else:
        rows[0] = torch.tensor([0, 1, 0, 1, 2, 2])
    with pytest.raises(ValueError, match="kernels.sparse_decode"):
        kernels.sparse_decode(z, rows, cols, W, R)
    if bad != "rows_unsorted":
        with pytest.raises(ValueError, match="kernels.decode_backward"):
            kernels.decode_backward(z, rows, cols, torch.randn(S, R, d_in), W)
    if bad in ("col_high", "col_negative"):
        with pytest.raises(ValueError, match="kernels.sum_by_latent"):
            kernels.sum_by_latent(z, rows, cols, torch.randn(S, R, d_in), d_sae)


# ---------------------------------------------------------------- the cache


def _env(cache, **more):
    env = {"HUSAI_CACHE": str(cache), **more}
    if os.environ.get("CC") == "/bin/false":
        env.setdefault("CC", shutil.which("cc") or "cc")
    return env


def test_a_cache_others_may_write_is_not_used(tmp_path):
    """A home cache writable by group or others (a library put there would be loaded): one warning
    naming it, and the library is built in the private temporary directory instead; nothing is
    written there."""
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    cache.mkdir()
    tmp.mkdir()
    cache.chmod(0o777)
    out = _child(_env(cache, TMPDIR=str(tmp)))
    assert out["first"] and len(out["warnings"]) == 1 and "not private" in out["warnings"][0]
    assert str(cache) in out["warnings"][0]
    _check_child_topk(out)
    assert list(cache.iterdir()) == []
    assert [f.suffix for f in (tmp / f"husai-kernels-{os.getuid()}").iterdir()] == [".so"]


def test_a_build_prunes_other_sources_and_keeps_other_flags(tmp_path):
    """Builds of other sources (an older husai: the old and the current naming) are deleted when a
    new library is built; a build of the same sources for other flags stays, and so does any other
    file."""
    cache = tmp_path / "cache"
    cache.mkdir()
    cc = shutil.which(
        os.environ.get("CC") if os.environ.get("CC") not in (None, "/bin/false") else "cc"
    )
    name, prefix = kernel_build._names(cc)
    old_format, other_src = (
        cache / "kernels-0123456789abcdef.so",
        cache / "kernels-000000000000-11111111.so",
    )
    same_src, note = cache / f"{prefix}99999999.so", cache / "notes.txt"
    for f in (old_format, other_src, same_src, note):
        f.write_bytes(b"x")
    out = _child(_env(cache))
    assert out["first"] and out["warnings"] == []
    assert sorted(f.name for f in cache.iterdir()) == sorted([name, same_src.name, note.name])


def test_a_cached_build_is_loaded_without_running_the_compiler(tmp_path):
    """CC is a script that logs each call: the first process compiles once; the second finds its
    build and runs the compiler not at all (no `cc --version` per process)."""
    log = tmp_path / "cc.log"
    real = shutil.which("gcc") or shutil.which("cc")
    wrapper = tmp_path / "logging-cc"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    env = _env(tmp_path / "cache", CC=str(wrapper))
    assert _child(env)["first"]
    assert len(log.read_text().splitlines()) == 1
    again = _child(env)
    assert again["first"] and again["warnings"] == []
    assert len(log.read_text().splitlines()) == 1
