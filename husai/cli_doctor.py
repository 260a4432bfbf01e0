"""`husai doctor`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor_cmd(
        transformer_checkpoint: Optional[Path] = typer.Option(
            None, "--transformer-checkpoint", help="A train-model run folder (default: train a small model first)."),
    ):
        """Five-step pipeline self-test: model, activations, SAE, Fourier overlap, save/load."""
        from .doctor import doctor_main

        raise typer.Exit(doctor_main(transformer_checkpoint))
