"""The tiny study every study test shares (a p = 47 model, three SAE cells, one of which diverges
and must be recorded as failed), how to run it, and what its outcome must look like."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HUSAI = [sys.executable, "-m", "husai.cli"]
CONFIG = {
    "model": {
        "preset": "fast",
        "p": 47,
        "seeds": [0],
        "stop_test_acc": 0.995,
        "stop_frac_single_freq": 0.0,
        "eval_every": 50,
    },
    "seeds": [1, 2, 3],
    "saes": [
        {"architecture": "topk", "expansion": 2, "k": 4, "epochs": 2, "batch_size": 128},
        {"architecture": "relu", "expansion": 2, "l1_coeff": 0.3, "epochs": 2, "batch_size": 128},
        # diverges at once: must be recorded as failed, with the others going on
        {
            "architecture": "relu",
            "expansion": 2,
            "l1_coeff": 0.1,
            "epochs": 2,
            "batch_size": 128,
            "lr": 1.0e6,
        },
    ],
    "stability": {"threshold": 0.7, "controls": ["untrained"], "control_seeds": 2},
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # same thread count in every run: bitwise-equal tables


def study(cfg: Path, out: Path, *extra, **kw):
    return subprocess.run(
        HUSAI + ["study", "--config", str(cfg), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        env=ENV,
        **kw,
    )


def assert_one_cell_failed(r: subprocess.CompletedProcess, others_may_log: bool = False) -> None:
    """CONFIG's diverging cell fails: the study writes everything, then exits 1 saying so in one
    line (the last; with others_may_log, after what other programs, e.g. Ray, print to stderr)."""
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert (others_may_log or len(lines) == 1) and lines[-1].startswith(
        "error: 1 of 3 SAE cells failed"
    ), r.stderr
    lines = lines[-1:]
    assert (
        "relu_x2_l1_0.1" in lines[0] and "failed.json" in lines[0] and "--retry-failed" in lines[0]
    )


def reuse_model(ref: Path, out: Path) -> None:
    """Make `out` the study `ref` as it stood right after its model stage (its config and trained
    model), so that a test spends its time on the SAE stages."""
    shutil.copytree(ref / "models", out / "models")
    shutil.copy(ref / "study.yaml", out / "study.yaml")
