"""`husai train-model` and `husai analyze-model`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from husai.errors import HusaiError


def register(app: typer.Typer) -> None:
    @app.command("train-model")
    def train_model_cmd(
        out: Path = typer.Option(Path("runs/model"), "--out", help="Run folder to write."),
        preset: str = typer.Option("fast", help="canonical (Nanda et al.) or fast."),
        seed: int = typer.Option(
            0, help="Seed of the weight init (and of the split unless --split-seed)."
        ),
        split_seed: Optional[int] = typer.Option(None, help="Seed of the train/test split."),
        epochs: Optional[int] = typer.Option(
            None, help="Maximum epochs (preset default otherwise)."
        ),
        lr: Optional[float] = typer.Option(None, help="AdamW learning rate."),
        weight_decay: Optional[float] = typer.Option(
            None, help="AdamW weight decay (before a preset's clean-up phase)."
        ),
        train_frac: Optional[float] = typer.Option(
            None, help="Fraction of pairs used for training."
        ),
        p: int = typer.Option(113, help="Prime modulus."),
        operation: str = typer.Option("add", help="add, sub or mul."),
        n_layers: int = typer.Option(1, help="Transformer blocks."),
        device: str = typer.Option("cpu", help="cpu or cuda."),
        checkpoint_every: int = typer.Option(1000, help="Epochs between resumable checkpoints."),
        eval_every: Optional[int] = typer.Option(
            None, help="Epochs between evaluations (preset default otherwise)."
        ),
        snapshot_every: Optional[int] = typer.Option(
            None,
            help="Epochs between weight snapshots for the progress "
            "measures (0: none; preset default otherwise).",
        ),
        run_all_epochs: bool = typer.Option(
            False, "--run-all-epochs", help="Ignore the grokked-and-clean stopping rule."
        ),
        resume: bool = typer.Option(
            False, "--resume", help="Continue a killed run from its last checkpoint."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an existing run in --out."
        ),
        wandb: bool = typer.Option(
            False, "--wandb", help="Log to Weights & Biases (offline unless WANDB_MODE)."
        ),
        threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's choice)."),
    ):
        """Train the modular-addition transformer until it has grokked and cleaned up."""
        from husai.interrupts import on_interrupt

        phase = "starting"

        def note() -> (
            str | None
        ):  # None while train_model() runs: its own note names what the run keeps
            return {
                "starting": f"nothing was written to {out}; run the same command again",
                "finished": f"the run in {out} had finished and is complete",
            }.get(phase)

        def on_disk() -> (
            str
        ):  # a Ctrl-C in the hand-over to train_model() or back: what the folder holds
            from husai.model.train import _resume_note

            if (out / "model.safetensors").is_file() and (out / "metrics.json").is_file():
                return f"the run in {out} had finished and is complete"
            return _resume_note(out)

        with on_interrupt(note, fallback=on_disk):
            from rich.console import Console

            from husai.locks import exclusive
            from husai.model.train import PRESETS, TrainConfig, train_model

            if preset not in PRESETS:
                raise HusaiError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
            overrides = dict(
                epochs=epochs,
                lr=lr,
                weight_decay=weight_decay,
                train_frac=train_frac,
                eval_every=eval_every,
                snapshot_every=snapshot_every,
            )
            kw = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
            cfg = TrainConfig(
                p=p,
                operation=operation,
                n_layers=n_layers,
                seed=seed,
                split_seed=split_seed,
                checkpoint_every=checkpoint_every,
                run_all_epochs=run_all_epochs,
                preset=preset,
                **kw,
            )
            phase = "training"
            with exclusive(out, "husai train-model", "--out"):  # one writer per run folder
                m = train_model(
                    cfg,
                    out,
                    device=device,
                    resume=resume,
                    overwrite=overwrite,
                    use_wandb=wandb,
                    threads=threads,
                )
            phase = "finished"
            _print_metrics(Console(), m, f"model written to {out}")

    @app.command("analyze-model")
    def analyze_model_cmd(run_dir: Path = typer.Argument(..., help="A train-model run folder.")):
        """Measure a trained model's Fourier ground truth and update its metrics.json."""
        from rich.console import Console

        from husai.io import read_json, write_json
        from husai.model.analyze import analyze_model
        from husai.model.checkpoint import load_model
        from husai.model.data import make_dataset

        model, cfg = load_model(run_dir)
        data = make_dataset(cfg["p"], cfg["train_frac"], cfg["split_seed"], cfg["operation"])
        m = analyze_model(model, data)
        path = run_dir / "metrics.json"
        merged = {**(read_json(path, "metrics") if path.exists() else {}), **m}
        write_json(path, merged)
        _print_metrics(Console(), merged, f"metrics written to {path}")


def _print_metrics(console, m: dict, footer: str) -> None:
    from rich.table import Table

    t = Table(title="model ground truth", show_header=False)
    for k in (
        "test_acc",
        "test_loss",
        "train_loss",
        "epochs_trained",
        "grokked_epoch",
        "clean_epoch",
        "key_frequencies",
        "frac_neurons_single_freq",
        "restricted_loss",
        "excluded_loss",
        "wall_seconds",
    ):
        if k in m:
            v = m[k]
            t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(t)
    console.print(footer)
