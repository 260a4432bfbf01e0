"""Many sweep cells at once: a width x k grid of TopK cells trained one pass per cell, against one
pass per width (husai.sae.cells.train_cells: every k of a width in one StackedSAE). Prints, per
width, wall seconds both ways, cells per minute, and the largest EV difference between the two
(the same SAEs up to float rounding).

    python benchmarks/bench_cells.py --transformer-checkpoint runs/study/models/seed0 --epochs 2
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from bench_sae import get_activations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transformer-checkpoint", default=None)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--expansions", default="1,4,16")
    ap.add_argument("--ks", default="8,16,32,64")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from husai.sae.cells import train_cells
    from husai.sae.config import SAETrainConfig

    x = get_activations(args)
    seeds = list(range(1, args.seeds + 1))
    print(
        f"activations {list(x.shape)}, {args.seeds} seeds per cell, {args.epochs} epochs, "
        f"threads {args.threads}"
    )
    print(
        f"{'d_sae':>6s} {'cells':>5s} {'per cell s':>10s} {'one pass s':>10s} {'cells/min':>17s} "
        f"{'max |dEV|':>9s}"
    )
    train_cells(x[:512], [(SAETrainConfig(expansion=1, k=8, epochs=1), [1])])  # warm-up
    total = {"alone": 0.0, "together": 0.0, "cells": 0}
    for e in (int(v) for v in args.expansions.split(",")):
        base = SAETrainConfig(architecture="topk", expansion=e, epochs=args.epochs)
        cells = [
            (replace(base, k=k), seeds)
            for k in map(int, args.ks.split(","))
            if k < base.d_sae(x.shape[1])
        ]
        t = time.perf_counter()
        alone = train_cells(x, cells, passes=[[i] for i in range(len(cells))])
        t_alone = time.perf_counter() - t
        t = time.perf_counter()
        together = train_cells(x, cells)
        t_together = time.perf_counter() - t
        dev = max(
            abs(a - b)
            for ra, rb in zip(alone, together)
            for a, b in zip(ra.history[-1]["ev"], rb.history[-1]["ev"])
        )
        n = len(cells)
        print(
            f"{base.d_sae(x.shape[1]):6d} {n:5d} {t_alone:10.1f} {t_together:10.1f} "
            f"{60 * n / t_alone:7.1f} -> {60 * n / t_together:6.1f} {dev:9.1e}"
        )
        total["alone"] += t_alone
        total["together"] += t_together
        total["cells"] += n
    n = total["cells"]
    print(
        f"grid: {n} cells, {60 * n / total['alone']:.1f} cells/min one pass per cell, "
        f"{60 * n / total['together']:.1f} cells/min one pass per width "
        f"({total['alone'] / total['together']:.2f}x)"
    )


if __name__ == "__main__":
    main()
