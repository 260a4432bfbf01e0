"""Cells per minute with the process executor and with a local Ray instance, on one small study,
and what the full grid (configs/study_full.yaml) would cost on N CPUs from a finished study's
per-cell cost.

    python benchmarks/bench_executors.py run [--cells 8] [--workers 2]
    python benchmarks/bench_executors.py estimate --study runs/study [--cpus 2,16,64,256]

run: one study of `--cells` TopK cells (one model, resid_post, widths 32-256, k 8 and 16, 5 epochs,
no oracle trainings) is run from nothing twice, with `--executor process --workers W` and with
`--executor ray` (a local instance: every CPU of the machine), each in its own folder; it prints
each one's cells per minute (cells / the SAE cell stage's wall time, from the study's timing.json)
and their ratio. Each run trains its model (a study folder holds only what husai wrote), which
the cell stage's wall time leaves out.

estimate: from the analysis.json of every cell of a finished study (its "timing": wall seconds and
stages), a per-cell cost model per architecture, seconds = a + b * latents (least squares over the
study's widths, scaled by the full grid's SAE seeds / the study's), summed over the full grid's
cells, divided by N CPUs (one cell a CPU, as the Ray executor schedules them). It
extrapolates past the study's widths (1024, 2048 latents) and to hooks and families the study did
not train (BatchTopK and Matryoshka costed as TopK, JumpReLU as ReLU): a floor to check, not a
promise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import yaml

COSTED_AS = {"batchtopk": "topk", "matryoshka": "topk", "jumprelu": "relu"}


def small_study(n_cells: int) -> dict:
    widths = [32, 64, 128, 256]
    ks = [8, 16]
    cells = [(w, k) for k in ks for w in widths][:n_cells]
    return dict(
        model=dict(preset="fast", seeds=[0]),
        hooks=["blocks.0.hook_resid_post"],
        seeds=[42, 123, 456],
        saes=[dict(architecture="topk", latents=w, k=k, epochs=5) for w, k in cells],
        oracle=dict(encoder=False, started=False),
    )


def run(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="husai-executors-"))
    (root / "study.yaml").write_text(yaml.safe_dump(small_study(args.cells)))
    rates = {}
    for name, flags in (
        ("process", ["--executor", "process", "--workers", str(args.workers)]),
        ("ray", ["--executor", "ray"]),
    ):
        out = root / name
        cmd = [sys.executable, "-m", "husai.cli", "study", "--config", str(root / "study.yaml")]
        done = subprocess.run(cmd + ["--out", str(out), *flags], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{name}: husai study failed:\n{done.stdout[-2000:]}{done.stderr}")
        timing = json.loads((out / "timing.json").read_text())
        rates[name] = 60 * timing["cells"] / timing["cells_wall_seconds"]
        print(
            f"{name}: {timing['cells']} cells in {timing['cells_wall_seconds']:.1f} s: "
            f"{rates[name]:.2f} cells/min (cell time summed {timing['cell_seconds']:.1f} s)"
        )
    print(f"ray / process: {rates['ray'] / rates['process']:.2f}")
    shutil.rmtree(root, ignore_errors=True)


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of seconds = a + b * latents, least squares; one width: b = 0."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def estimate(args) -> None:
    from husai.study.config import load_study

    study = Path(args.study)
    cfg = load_study(study / "study.yaml")
    by_arch = defaultdict(list)
    for run_ in cfg.runs():
        an = run_.folder(study) / "analysis.json"
        if not an.is_file():
            continue
        t = json.loads(an.read_text()).get("timing") or {}
        if t.get("wall_seconds"):
            by_arch[run_.cfg.architecture].append((run_.cfg.d_sae(128), t["wall_seconds"]))
    if not by_arch:
        raise SystemExit(f"{study}: no cell with timing (run the study with this husai first)")
    models = {a: _fit(p) for a, p in by_arch.items()}
    for a, (c0, c1) in models.items():
        print(
            f"{a}: {len(by_arch[a])} cells, seconds = {c0:.1f} + {c1 * 1000:.2f} per 1000 latents"
        )
    full = load_study(Path(__file__).resolve().parents[1] / "husai/study/configs/study_full.yaml")
    scale = len(full.seeds) / len(cfg.seeds)
    total = 0.0
    for run_ in full.runs():
        a = COSTED_AS.get(run_.cfg.architecture, run_.cfg.architecture)
        c0, c1 = models.get(a) or next(iter(models.values()))
        total += max(c0 + c1 * run_.cfg.d_sae(128), 1.0) * scale
    print(f"full grid: {len(full.runs())} cells, ~{total / 3600:.1f} CPU-hours")
    for n in [int(c) for c in args.cpus.split(",")]:
        print(f"  on {n} CPUs: ~{total / n / 3600:.2f} h")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--cells", type=int, default=8)
    r.add_argument("--workers", type=int, default=2)
    e = sub.add_parser("estimate")
    e.add_argument("--study", required=True, help="a finished study folder")
    e.add_argument("--cpus", default="2,16,64,256")
    args = ap.parse_args()
    run(args) if args.cmd == "run" else estimate(args)


if __name__ == "__main__":
    main()
