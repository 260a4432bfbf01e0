"""`husai doctor`: the five-step pipeline self-test (husai.study.doctor), each check printed with
its figures and, when it fails, what to try. Exit code 0 only when 5/5 pass.

Without --transformer-checkpoint it first trains a small model (p = 47, ~1 minute on a CPU).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor_cmd(
        transformer_checkpoint: Optional[Path] = typer.Option(
            None,
            "--transformer-checkpoint",
            help="A train-model run folder (default: train a small model first).",
        ),
    ):
        """Five-step pipeline self-test: model, activations, SAE, Fourier overlap, save/load."""
        from husai.study.doctor import environment, run_doctor

        print("husai doctor: " + ", ".join(f"{k} {v}" for k, v in environment().items()))
        with tempfile.TemporaryDirectory(prefix="husai-doctor-") as tmp:
            checks = run_doctor(transformer_checkpoint, Path(tmp), print)
        raise typer.Exit(0 if all(c.passed for c in checks) else 1)
