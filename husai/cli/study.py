"""`husai study` and `husai report`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "study",
        help="Model -> SAEs over a grid of seeds -> Fourier validation and stability with nulls "
        "-> report.",
    )
    def study_cmd(
        config: str = typer.Option(
            "default",
            "--config",
            help="Study YAML (a grid of SAE runs), or a study that "
            "ships with husai: default (the small sweep make run runs) or full (1,800 cells).",
        ),
        out: Path = typer.Option(
            Path("runs/study"), "--out", help="Study folder; rerun the same command to resume."
        ),
        executor: str = typer.Option(
            "local", "--executor", help="local (in-process), process (pool) or ray."
        ),
        workers: int = typer.Option(2, "--workers", help="Processes for --executor process."),
        address: Optional[str] = typer.Option(
            None, "--address", help="Ray cluster address (default: start a local one)."
        ),
        retry_failed: bool = typer.Option(
            False, "--retry-failed", help="Redo cells recorded as failed."
        ),
        show_plan: bool = typer.Option(
            False,
            "--plan",
            help="Print what would run (config, models, cells) and stop, writing nothing.",
        ),
    ):
        from husai.errors import HusaiError
        from husai.interrupts import on_interrupt

        # a Ctrl-C before the study's own note is armed (imports, config, the claim)
        def on_disk() -> str:
            if (out / "study.yaml").is_file():
                return f"{out} keeps every finished step; rerun the same command to resume"
            return f"nothing was written to {out}; rerun the same command to start it"

        # the study's own note, once armed, passes through
        with on_interrupt(lambda: None, fallback=on_disk):
            from husai.study.runner import plan, run_study

            if show_plan:
                typer.echo("\n".join(plan(config, out)))
                return
            if workers < 1:
                raise HusaiError(f"--workers must be >= 1, got {workers}")
            res = run_study(config, out, executor, workers, address, retry_failed)
        if res.failed:  # the table and report are written; the exit status still says it failed
            first = res.failed[0].relative_to(out)
            more = f" and {len(res.failed) - 1} more" if len(res.failed) > 1 else ""
            typer.echo(
                f"error: {len(res.failed)} of {res.n_cells} SAE cells failed; their errors are in "
                f"the report and in {first}{more}; redo them with --retry-failed",
                err=True,
            )
            raise typer.Exit(1)

    @app.command(
        "report",
        help="Rebuild results.csv/parquet, report.md, report.html and figures from a study's "
        "finished runs.",
    )
    def report_cmd(
        run_dir: Path = typer.Argument(..., help="A study folder (holding study.yaml)."),
    ):
        from husai.errors import HusaiError
        from husai.interrupts import on_interrupt
        from husai.locks import exclusive
        from husai.outputs import STUDY, files_in
        from husai.study.report import write_report

        if not run_dir.is_dir() or not STUDY.is_folder_of(files_in(run_dir)):
            raise HusaiError(f"{run_dir} is not a study folder (no study.yaml)")
        with (
            exclusive(run_dir, "husai report", "study"),
            on_interrupt(
                f"the files of {run_dir} are all whole (each is replaced atomically), some still "
                f"from the earlier report; rerun husai report {run_dir}"
            ),
        ):
            typer.echo(f"report: {write_report(run_dir)}")
