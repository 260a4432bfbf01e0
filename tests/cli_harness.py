"""The CLI test harness shared by the hardening, output-guard and interrupt tests.

`husai(work, *args)` runs one husai command in a separate process with its own exit status,
stdout and stderr ("W/" in ARGS stands for the case's work folder); `snapshot` and
`assert_unchanged` prove that every file on disk before is still there byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from husai.io import save_tensors

HUSAI = [sys.executable, "-m", "husai.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("HUSAI_DEBUG", None)


# ---------------------------------------------------------------------------------------------
# fixtures: one small model run, a two-seed SAE on it, an activation file; copied per case


@pytest.fixture(scope="module")
def pristine(tiny_run, tmp_path_factory):
    """{run, sae, acts}: a p=23 model run folder, a two-seed SAE output folder, an activation
    file."""
    from husai.cli.sae import run_train_sae
    from husai.sae.activations import model_activations, save_activations
    from husai.sae.config import SAETrainConfig

    run, _ = tiny_run
    root = tmp_path_factory.mktemp("hardening")
    cfg = SAETrainConfig(architecture="topk", expansion=2, k=4, epochs=1, batch_size=128)
    run_train_sae(cfg, root / "sae", [1, 2], transformer_checkpoint=run, layer=0, progress=False)
    acts, info = model_activations(run, layer=0)
    save_activations(root / "acts.safetensors", acts, info)
    return dict(run=Path(run), sae=root / "sae", acts=root / "acts.safetensors")


@pytest.fixture
def work(pristine, tmp_path):
    """A fresh work folder W holding W/run, W/sae, W/acts.safetensors, W/afile (a regular file)."""
    shutil.copytree(pristine["run"], tmp_path / "run")
    shutil.copytree(pristine["sae"], tmp_path / "sae")
    shutil.copy(pristine["acts"], tmp_path / "acts.safetensors")
    (tmp_path / "afile").write_text("a regular file, not a folder\n")
    d_in = int(json.loads((tmp_path / "sae" / "seed_1" / "cfg.json").read_text())["d_in"])
    atoms = torch.randn(
        6, d_in, generator=torch.Generator().manual_seed(0)
    )  # a user's ground truth (husai recover)
    save_tensors(tmp_path / "gt.safetensors", {"atoms": atoms, "plane.two": atoms[:2].clone()})
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_unchanged(before: dict[str, str], root: Path) -> None:
    after = snapshot(root)
    changed = [k for k, h in before.items() if after.get(k) != h]
    assert not changed, f"pre-existing files changed or lost: {changed}"


def assert_clean_error(r: subprocess.CompletedProcess, match: str | None = None) -> None:
    assert r.returncode != 0, f"exit 0 on bad input\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    # a crash of husai's own code shows as "error: SomeType: ..." with exit 1; bad input is exit 2
    assert r.returncode == 2, f"not a clean HusaiError (exit {r.returncode}): {r.stderr}"
    if match is not None:
        assert match.lower() in r.stderr.lower(), r.stderr


def husai_subprocess(work: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m husai.cli ARGS` in a fresh interpreter ("W/" in ARGS stands for the work
    folder)."""
    argv = [a.replace("W/", f"{work}/") if isinstance(a, str) else str(a) for a in args]
    return subprocess.run(
        HUSAI + argv, capture_output=True, text=True, env=ENV, cwd=work, timeout=timeout
    )


def husai_forked(work: Path, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """The same, in a forked child of this (already imported) interpreter: a separate process with
    its own exit status, stdout and stderr, without paying ~1.5 s of imports per case. The child
    runs exactly what `python -m husai.cli` runs: husai.cli.main() with sys.argv set."""
    import signal
    import tempfile

    argv = [a.replace("W/", f"{work}/") if isinstance(a, str) else str(a) for a in args]
    with tempfile.TemporaryFile() as fo, tempfile.TemporaryFile() as fe:
        sys.stdout.flush(), sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child: never returns
            code = 1
            try:
                os.chdir(work)
                os.dup2(fo.fileno(), 1)
                os.dup2(fe.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)
                sys.stderr = open(2, "w", closefd=False)
                os.environ.pop("HUSAI_DEBUG", None)
                sys.argv = ["husai", *argv]
                from husai.cli import main

                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # what the interpreter would print for an escaped exception
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                try:
                    sys.stdout.flush(), sys.stderr.flush()
                finally:
                    os._exit(code)
        signal.signal(signal.SIGALRM, lambda *a: os.kill(pid, signal.SIGKILL))
        signal.alarm(timeout)
        try:
            _, status = os.waitpid(pid, 0)
        finally:
            signal.alarm(0)
        fo.seek(0), fe.seek(0)
        out, err = fo.read().decode(errors="replace"), fe.read().decode(errors="replace")
    return subprocess.CompletedProcess(HUSAI + argv, os.waitstatus_to_exitcode(status), out, err)


# HUSAI_HARDENING_SUBPROCESS=1 runs every case through a fresh `python -m husai.cli` (~4x slower);
# test_same_outcome_in_a_real_subprocess checks a sample of cases both ways.
husai = (
    husai_subprocess
    if os.environ.get("HUSAI_HARDENING_SUBPROCESS") or not hasattr(os, "fork")
    else husai_forked
)
