"""`husai study`: from nothing to a stability report, resumable, on one machine or a Ray cluster.

    OUT/study.yaml                          the config as given (a rerun must match it)
    OUT/models/seed{S}/                     train-model run folders (resumed if killed)
    OUT/saes/model_seed{S}/{hook}/{arch}_x{E}_{knob}/
        seed_{N}/cfg.json + sae_weights.safetensors   SAELens folders
        metrics.json                        per-seed SAE metrics (from husai train-sae)
        analysis.json                       Fourier validation + cross-seed stability with nulls,
                                            and the cell's timing by stage
        failed.json                         only if the cell failed: the error, kept in the table
    OUT/results.csv, OUT/results.parquet    one row per SAE, rebuilt from the folders
    OUT/report.md, OUT/report.html, OUT/figures/*.png
    OUT/browser.html                        every latent of every seed, looked at (husai.browse)
    OUT/timing.json                         where the cells' time went, by stage (husai.timing)

A cell's SAE folder appears only once training has finished (train-sae stages and renames), and
analysis.json is written atomically, so after a kill -9 the same command skips every finished
cell and redoes only the one that was running. Every step is seeded, so the table is identical.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from husai.errors import HusaiError
from husai.interrupts import on_interrupt, raise_if_interrupted
from husai.io import atomic_write_bytes, write_json
from husai.outputs import STUDY, STUDY_CELL, claim_folder, remove_output
from husai.study.config import SAERun, StudyConfig, load_study, resolve_config
from husai.timing import stage, take

EXECUTORS = ("local", "process", "ray")


def model_dir(out: Path, seed: int) -> Path:
    return out / "models" / f"seed{seed}"


def model_ready(out: Path, seed: int) -> bool:
    d = model_dir(out, seed)
    return (d / "model.safetensors").is_file() and (d / "metrics.json").is_file()


def ensure_model(cfg: StudyConfig, out: Path, seed: int, progress: bool = True) -> Path:
    """Train the model for `seed`, resume it if a killed run left a checkpoint, or reuse it."""
    from dataclasses import replace

    from husai.model.train import train_model

    d = model_dir(out, seed)
    if model_ready(out, seed):
        return d
    # a run killed before its first checkpoint resumes from epoch 0: the same seeded run
    train_model(
        replace(cfg.model, seed=seed), d, resume=(d / "config.json").is_file(), progress=progress
    )
    return d


def cell_spec(run: SAERun, out: Path, cfg: StudyConfig) -> dict:
    """Everything a worker needs, as plain data (picklable for process pools and Ray)."""
    return dict(
        root=str(out),
        folder=str(run.folder(out)),
        model_dir=str(model_dir(out, run.model_seed)),
        hook=run.hook,
        sae_cfg=run.cfg.to_dict(),
        seeds=list(run.seeds),
        threshold=cfg.threshold,
        controls=list(cfg.controls) if cfg.has_controls(run) else [],
        control_seeds=list(run.seeds)[: cfg.control_seeds],
        oracle=cfg.oracle_for(run),
    )


def cell_done(folder: Path) -> bool:
    return (folder / "failed.json").is_file() or (folder / "analysis.json").is_file()


def run_cell(spec: dict, threads: int | None = None) -> dict:
    """Train one grid cell's SAEs (all seeds at once) and analyse them. Never raises: a failure is
    written to failed.json so the study goes on and the table shows it."""
    import torch

    from husai.analysis.compare import compare_saes
    from husai.sae.config import config_from_dict
    from husai.sae.run import run_train_sae

    if threads:
        torch.set_num_threads(threads)
    folder = Path(spec["folder"])
    t0 = time.perf_counter()
    take()  # what this process timed before the cell is no part of it
    try:
        if not (folder / "metrics.json").is_file():
            run_train_sae(
                config_from_dict(spec["sae_cfg"]),
                folder,
                spec["seeds"],
                transformer_checkpoint=spec["model_dir"],
                hook=spec["hook"],
                progress=False,
            )
        dirs = [folder / f"seed_{s}" for s in spec["seeds"]] if len(spec["seeds"]) > 1 else [folder]
        # no per-cell PNGs: the report draws every cell's heatmap in one figure, and a cell's
        # own figures cost 1.4-1.8 s of its ~15 s of analysis (BENCHMARKS.md, study time)
        result = (
            compare_saes(dirs, Path(spec["model_dir"]), threshold=spec["threshold"], plots=None)
            if len(dirs) > 1
            else None
        )
        if result and spec.get("controls"):
            from husai.study.controls import contrast, run_controls

            with stage("controls"):
                result["controls"] = run_controls(
                    spec["model_dir"],
                    spec["hook"],
                    config_from_dict(spec["sae_cfg"]),
                    spec["control_seeds"],
                    spec["controls"],
                    spec["threshold"],
                )
                # the grokked model's SAEs against the control's, pair by pair
                for c in result["controls"].values():
                    c["contrast"] = contrast(
                        result["stability"]["levels"], c, len(spec["control_seeds"])
                    )
        if result and spec.get("oracle", {}).get("score"):
            from husai.study.oracle_cell import oracle_for_cell

            result["oracle"] = oracle_for_cell(folder, spec)
        cost = cell_timing(t0)  # analysis.json's own write, ~ms, falls outside it
        write_json(folder / "analysis.json", dict(result or {}, timing=cost))
        return dict(folder=str(folder), status="ok", seconds=cost["wall_seconds"], timing=cost)
    except Exception as e:  # recorded, reported, never silently dropped
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = msg.replace(
            spec["root"].rstrip("/") + "/", ""
        )  # relative paths: the table must not depend on --out
        cost = cell_timing(t0)
        write_json(
            folder / "failed.json", dict(error=f"{type(e).__name__}: {msg}", spec=spec, timing=cost)
        )
        return dict(
            folder=str(folder),
            status="failed",
            error=msg,
            seconds=cost["wall_seconds"],
            timing=cost,
        )


def cell_timing(t0: float) -> dict:
    """{stages {name: seconds}, other, wall_seconds}: the stages this process timed since the cell
    began at time.perf_counter() t0 (husai.timing), and the part of its wall time no stage
    covered."""
    wall = time.perf_counter() - t0
    stages = take()
    return dict(stages=stages, other=max(0.0, wall - sum(stages.values())), wall_seconds=wall)


def execute(
    specs: list[dict],
    executor: str,
    workers: int,
    address: str | None,
    on_done,
    models: list[tuple] = (),
    on_model=None,
) -> None:
    """Run cells locally, in a process pool, or as Ray tasks; on_done(result) as each finishes.
    models: (study config, out, seed) of models still to train, in the process pool with the cells
    (the process executor only): a cell is submitted once its model is there, on_model(seed)."""
    if executor == "local":
        for s in specs:
            on_done(run_cell(s))
            raise_if_interrupted()  # a Ctrl-C that a weakref callback swallowed during the cell
    elif executor == "process":
        import concurrent.futures as cf
        import multiprocessing as mp
        import os
        import signal

        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        # A Ctrl-C reaches the whole process group. The workers are started with SIGINT blocked (a
        # signal mask survives exec), so only this process handles it, and a worker never prints a
        # traceback; on Ctrl-C it stops them and their unfinished cells are redone on resume.
        try:
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                # a model trains on one thread (husai.model.train: its batches are small), so the
                # models train side by side with each other and with the cells of those already
                # there (the default study's three took 66 s one after the other, a core idle)
                futures = {pool.submit(ensure_model, *m, False): m[2] for m in models}
                later = {str(model_dir(out, seed)): [] for _, out, seed in models}
                for s in specs:
                    if s["model_dir"] in later:
                        later[s["model_dir"]].append(s)
                    else:
                        futures[pool.submit(run_cell, s, threads)] = None  # spawns the workers
            finally:
                signal.pthread_sigmask(
                    signal.SIG_SETMASK, old
                )  # a Ctrl-C held back arrives here, inside the try
            while futures:
                finished, _ = cf.wait(futures, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    seed = futures.pop(fut)
                    if seed is None:
                        on_done(fut.result())
                        continue
                    ready = fut.result()  # a model that failed stops the study, as in this process
                    if on_model is not None:
                        on_model(seed)
                    for s in later.pop(str(ready), []):
                        futures[pool.submit(run_cell, s, threads)] = None
                raise_if_interrupted()
        except BaseException:
            for proc in list(
                getattr(pool, "_processes", {}).values()
            ):  # Python < 3.14 has no terminate_workers
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    else:
        try:
            import ray
        except ImportError:
            raise HusaiError("--executor ray needs Ray: pip install 'husai[ray]'") from None
        ray.init(
            address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False
        )
        task = ray.remote(num_cpus=1)(run_cell)
        pending = [task.remote(s, 1) for s in specs]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            on_done(ray.get(ready[0]))
            raise_if_interrupted()


def check_config_matches(out: Path, raw: dict) -> None:
    saved = out / "study.yaml"
    if saved.is_file():
        if yaml.safe_load(saved.read_text()) != raw:
            raise HusaiError(
                f"{out} holds a study with a different config; use another --out or the same config"
            )


@dataclass
class StudyOutcome:
    """What `run_study` leaves on disk."""

    report: Path
    """report.html."""
    n_cells: int
    """SAE cells in the grid."""
    failed: list[Path]
    """The failed.json of every cell that failed (its error is also in the table and report)."""


def run_study(
    config: str | Path,
    out: str | Path,
    executor: str = "local",
    workers: int = 2,
    address: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
) -> StudyOutcome:
    """The whole study: claims `out` (new, or a study with the same config to resume;
    husai.outputs), then model -> SAE cells -> table -> report. A failed cell does not stop the
    others."""
    from rich.console import Console

    from husai.locks import exclusive

    console = Console(quiet=not progress)
    if executor not in EXECUTORS:
        raise HusaiError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    cfg = checked_study(config)
    out = Path(out)
    runs = cfg.runs()

    def note() -> str:
        done = sum(cell_done(r.folder(out)) for r in runs)
        return (
            f"{out} keeps every finished step ({done} of {len(runs)} SAE cells); rerun the same "
            "command to resume"
        )

    with exclusive(
        out, "husai study", "--out"
    ):  # one writer per study folder, the driver holding it
        claim_folder(out, STUDY, "--out", inputs=(resolve_config(config),), resume=True)
        check_config_matches(out, cfg.raw)
        with on_interrupt(note):
            return _run_study(
                cfg, runs, out, executor, workers, address, retry_failed, console, progress
            )


def checked_study(config: str | Path) -> StudyConfig:
    """The study config (a path or a shipped name), validated down to its hook names."""
    from husai.model.transformer import Transformer

    cfg = load_study(config)
    valid = Transformer(cfg.model.model_config()).hook_names()
    bad = [h for h in cfg.hooks if h not in valid]
    if bad:
        raise HusaiError(
            f"study config key 'hooks': {bad[0]!r} is not a hook of the model; valid: "
            f"{', '.join(valid)}"
        )
    return cfg


def plan(config: str | Path, out: str | Path) -> list[str]:
    """What `husai study` would run, in a few lines, writing nothing (`husai study --plan`)."""
    cfg = checked_study(config)
    runs = cfg.runs()
    out = Path(out)
    done = sum(cell_done(r.folder(out)) for r in runs) if (out / "study.yaml").is_file() else 0
    archs = sorted({r.cfg.architecture for r in runs})
    return [
        f"config: {resolve_config(config)}",
        f"models: {len(cfg.model_seeds)} (preset {cfg.model.preset}, seeds "
        f"{', '.join(map(str, cfg.model_seeds))})",
        f"hooks: {', '.join(cfg.hooks)}",
        f"SAE cells: {len(runs)} ({', '.join(archs)}), {len(cfg.seeds)} SAE seeds each; {done} "
        f"already done in {out}",
    ]


def _run_study(
    cfg: StudyConfig,
    runs: list[SAERun],
    out: Path,
    executor: str,
    workers: int,
    address: str | None,
    retry_failed: bool,
    console,
    progress: bool,
) -> StudyOutcome:
    from husai.browse import write_browser
    from husai.study.report import browsable, write_report
    from husai.study.results import build_table

    t_study = time.perf_counter()
    if not (
        out / "study.yaml"
    ).is_file():  # one already there holds this config (check_config_matches), maybe
        # in the user's own words and comments (--config OUT/study.yaml): it is never rewritten
        atomic_write_bytes(out / "study.yaml", yaml.safe_dump(cfg.raw, sort_keys=False).encode())
    console.rule(
        f"husai study: {len(cfg.model_seeds)} model(s), {len(runs)} SAE cell(s) x {len(cfg.seeds)} "
        "seeds"
    )
    to_train = [s for s in cfg.model_seeds if not model_ready(out, s)]
    pooled = executor == "process" and workers > 1 and len(to_train) > 1
    for i, s in enumerate(cfg.model_seeds, 1):
        if pooled and s in to_train:
            continue
        console.print(f"[bold]stage 1/5[/] model {i}/{len(cfg.model_seeds)} (seed {s})")
        ensure_model(cfg, out, s, progress)
    if pooled:
        console.print(
            f"[bold]stage 1/5[/] models (seeds {', '.join(map(str, to_train))}) trained in the "
            "worker pool, each model's cells started once it is there"
        )
    if retry_failed:
        for r in runs:
            if (r.folder(out) / "failed.json").is_file():
                remove_output(r.folder(out), STUDY_CELL)
    todo = [r for r in runs if not cell_done(r.folder(out))]
    console.print(
        f"[bold]stage 2/5[/] SAE cells: {len(runs) - len(todo)} done, {len(todo)} to run "
        f"({executor})"
    )
    done, timed = [0], []

    def on_done(res: dict) -> None:
        done[0] += 1
        timed.append(res["timing"])
        rel = Path(res["folder"]).relative_to(out / "saes")
        status = "ok" if res["status"] == "ok" else f"[red]FAILED[/]: {res['error']}"
        console.print(f"  [{done[0]}/{len(todo)}] {rel}  {status}  ({res['seconds']:.0f} s)")

    with (
        console.status("training and analysing SAE cells") if progress else contextlib.nullcontext()
    ):
        t_cells = time.perf_counter()
        execute(
            [cell_spec(r, out, cfg) for r in todo],
            executor,
            workers,
            address,
            on_done,
            models=[(cfg, out, s) for s in to_train] if pooled else [],
            on_model=lambda s: console.print(f"  model seed {s} trained"),
        )
        t_cells = time.perf_counter() - t_cells
    console.print("[bold]stage 3/5[/] results table")
    rows = build_table(out, cfg)
    console.print("[bold]stage 4/5[/] report")
    html = write_report(out, rows)
    console.print(f"report: {html}")
    if browsable(out, cfg):  # else no SAE to show
        console.print("[bold]stage 5/5[/] feature browser")
        console.print(f"browser: {write_browser(out)}")
    if timed:  # a resumed study that ran no cell keeps the timing.json of the run that did
        summary = study_timing(timed, executor, workers, time.perf_counter() - t_study, t_cells)
        write_json(out / "timing.json", summary)
        console.print(timing_table(summary))
    # a Ctrl-C swallowed in the last stages gets the study's note, not a finished exit
    raise_if_interrupted()
    return StudyOutcome(
        html,
        len(runs),
        [r.folder(out) / "failed.json" for r in runs if (r.folder(out) / "failed.json").is_file()],
    )


def study_timing(
    cells: list[dict], executor: str, workers: int, wall: float, cells_wall: float
) -> dict:
    """OUT/timing.json from the timing of every cell this run ran (run_cell's): {executor, workers
    (None for Ray: the cluster's), wall_seconds (the study's), cells_wall_seconds (its SAE cell
    stage), cells, cell_seconds (their wall times summed), stages {name: {seconds, share}}: summed
    over the cells, share of cell_seconds, largest first, then "other"}."""
    sums: dict[str, float] = {}
    for c in cells:
        for k, v in c["stages"].items():
            sums[k] = sums.get(k, 0.0) + v
    total = sum(c["wall_seconds"] for c in cells)
    rows = sorted(sums.items(), key=lambda kv: -kv[1]) + [("other", sum(c["other"] for c in cells))]
    return dict(
        executor=executor,
        workers=1 if executor == "local" else None if executor == "ray" else workers,
        wall_seconds=wall,
        cells_wall_seconds=cells_wall,
        cells=len(cells),
        cell_seconds=total,
        stages={k: dict(seconds=v, share=v / total if total > 0 else None) for k, v in rows},
    )


def timing_table(summary: dict, title: str = "where the cells' time went"):
    """study_timing's summary as a rich Table: stage, seconds summed over cells, share of cell
    time; the caption gives the study's wall time and workers."""
    from rich.table import Table

    workers = summary["workers"] or "Ray"
    table = Table(
        title=title,
        caption=f"{summary['cells']} cell(s), {summary['cell_seconds']:.1f} s of cell time; "
        f"study wall {summary['wall_seconds']:.1f} s (cells {summary['cells_wall_seconds']:.1f} "
        f"s), {workers} worker(s) ({summary['executor']})",
    )
    for col in ("stage", "seconds", "share"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, r in summary["stages"].items():
        share = "" if r["share"] is None else f"{r['share']:.1%}"
        table.add_row(name, f"{r['seconds']:.1f}", share)
    return table
