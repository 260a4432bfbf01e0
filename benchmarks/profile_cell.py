"""Where a study cell's time goes: one cell of each kind (architecture x hook) of the default study,
run as the study runs it (husai.study.runner.run_cell, at the shipped config's settings), with the
time of each stage (husai.timing) and, optionally, a cProfile of one cell.

    python benchmarks/profile_cell.py --model runs/m0 [--threads 2] [--cprofile relu]

--model: a `husai train-model` run folder (default: train the study's model, seed 0, ~60 s).
Per cell: the stage table (seconds, share of the cell's wall time) and the ratio of the cell's wall
time to its SAE trainings (training + l0_search + oracle_training). A study worker computes a
hook's activations and ground truth once (husai.analysis.compare.model_context's cache) and keeps
them for its later cells; --cold clears that cache before each cell, as for a worker's first.
--cprofile KIND (e.g. relu, or relu@blocks.0.mlp.hook_post): only that kind's cell runs, under
cProfile (its stage times then include the profiler's overhead), and the top 25 functions by
cumulative time are printed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from husai.study.config import load_study
from husai.study.runner import cell_spec, model_dir, run_cell, study_timing, timing_table

TRAININGS = ("training", "l0_search", "oracle_training")
"""The stages that train SAEs: the cell's own, its L0 search's passes and the oracle's two."""


def kinds(cfg, index: int) -> dict:
    """{"arch@hook": SAERun}: per architecture and hook of the first model, the grid's cell at
    `index` among that kind's cells (grid order: -1 is the widest at the last knob value)."""
    by: dict[str, list] = {}
    for r in cfg.runs():
        if r.model_seed == cfg.model_seeds[0]:
            by.setdefault(f"{r.cfg.architecture}@{r.hook}", []).append(r)
    return {k: v[index] for k, v in by.items()}


def one_cell(run, cfg, root: Path, model: Path, threads: int) -> dict:
    """run_cell on a fresh study folder under root whose models/seed{S} is `model` -> its
    timing."""
    out = Path(tempfile.mkdtemp(dir=root))
    model_dir(out, run.model_seed).parent.mkdir(parents=True)
    model_dir(out, run.model_seed).symlink_to(model.resolve())
    res = run_cell(cell_spec(run, out, cfg), threads)
    if res["status"] != "ok":
        raise SystemExit(f"{run.name} @ {run.hook} failed: {res['error']}")
    return res["timing"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--config", default="default", help="study config (path or shipped name)")
    ap.add_argument("--index", type=int, default=-1, help="which cell of each kind (grid order)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cold", action="store_true")
    ap.add_argument("--cprofile", default=None, metavar="KIND")
    ap.add_argument("--only", default=None, help="run only the kinds containing this text")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    cfg = load_study(args.config)
    root = Path(tempfile.mkdtemp(prefix="husai-profile-"))
    model = args.model
    if model is None:
        from husai.study.runner import ensure_model

        model = ensure_model(cfg, root / "model", cfg.model_seeds[0])
    cells = {k: r for k, r in kinds(cfg, args.index).items() if args.only is None or args.only in k}
    if args.cprofile:
        cells = {k: r for k, r in cells.items() if args.cprofile in (k, k.split("@")[0])}
        if not cells:
            raise SystemExit(f"--cprofile {args.cprofile!r} names no kind of cell")
    prof = cProfile.Profile() if args.cprofile else None
    from husai.analysis import compare

    if not args.cold:  # what a worker's first cell of each hook pays once, timed apart
        for hook in sorted({r.hook for r in cells.values()}):
            t = time.perf_counter()
            compare.hook_ground_truth(compare.model_context(model, hook))
            t = time.perf_counter() - t
            console.print(f"warm-up {hook}: activations + ground truth {t:.1f} s")
    summary = {}
    for kind, run in cells.items():
        if args.cold:
            compare._CONTEXTS.clear()
        if prof is not None:
            prof.enable()
        t = one_cell(run, cfg, root, model, args.threads)
        if prof is not None:
            prof.disable()
        s = study_timing([t], "local", 1, t["wall_seconds"], t["wall_seconds"])
        console.print(timing_table(s, f"{run.name} @ {run.hook}"))
        trained = sum(t["stages"].get(n, 0.0) for n in TRAININGS)
        console.print(
            f"cell wall / SAE training ({' + '.join(TRAININGS)}): {t['wall_seconds']:.1f} / "
            f"{trained:.1f} = {t['wall_seconds'] / max(trained, 1e-9):.2f}"
        )
        summary[kind] = t
    console.print(f"threads {args.threads}, {'cold' if args.cold else 'warm'} caches, in {root}")
    for kind, t in summary.items():
        ranked = sorted(t["stages"].items(), key=lambda kv: -kv[1])
        row = "  ".join(f"{k} {v:.1f}" for k, v in ranked)
        console.print(f"{kind}: wall {t['wall_seconds']:.1f}  {row}  other {t['other']:.1f}")
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(25)
        prof.dump_stats(root / "cell.prof")  # for pstats queries beyond the top 25
        console.print(f"cProfile of {', '.join(cells)} ({root / 'cell.prof'}), top 25 cumulative:")
        print(buf.getvalue())


if __name__ == "__main__":
    main()
