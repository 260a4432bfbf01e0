"""`husai browse`: the feature browser page for a study or a folder of SAEs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        "browse",
        help="Write browser.html: every latent of every seed (heatmap over (a, b), E[z|c], 2-D "
        "Fourier spectrum, decoder planes, top inputs, logit effect, activation density, nearest "
        "oracle atom, best match in each other seed and in the oracle tiling) and the model's "
        "ground truth; offline. One cell: one self-contained file; several (a study): the page "
        "plus one data file per cell in browser_data/, read when the cell is opened.",
    )
    def browse_cmd(
        run_dir: Path = typer.Argument(
            ..., help="A study folder, a `husai train-sae` output, or a folder of SAE cells."
        ),
        model: Optional[Path] = typer.Option(
            None, "--model", help="The model run folder (default: the one the SAEs record)."
        ),
        out: Optional[Path] = typer.Option(
            None, "--out", help="The page to write (default: RUN_DIR/browser.html)."
        ),
        cell_files: Optional[bool] = typer.Option(
            None,
            "--cell-files/--one-file",
            help="Each cell's data in its own file beside the page (PAGE_data/cell_NNN.js), or "
            "everything in the page (default: cell files when there is more than one cell).",
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an earlier page husai browse wrote there."
        ),
    ):
        from husai.browse import write_browser
        from husai.errors import HusaiError
        from husai.interrupts import on_interrupt
        from husai.outputs import BROWSER, STUDY, claim_file, files_in

        if not run_dir.is_dir():
            raise HusaiError(f"{run_dir} is not a folder")
        page = out if out is not None else run_dir / "browser.html"
        if not page.parent.is_dir():
            raise HusaiError(f"--out {page}: its folder {page.parent} does not exist")
        # a study's own browser.html is rebuilt like its report; anywhere else an earlier page needs
        # --overwrite
        own = out is None and STUDY.is_folder_of(files_in(run_dir))
        claim_file(page, BROWSER, "--out", overwrite=overwrite or own)
        with on_interrupt(
            f"nothing was written to {page} (it is written whole at the end, after its cell "
            "files); run the same command again"
        ):
            typer.echo(f"browser: {write_browser(run_dir, page, model, cell_files)}")
