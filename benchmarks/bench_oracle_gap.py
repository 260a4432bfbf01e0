"""What closes the optimisation gap? The default study's TopK recipe and variations of it, on
reference cells of one grokked model, each scored against the oracle at the same width and k
(husai.analysis.optimisation_gap).

    python benchmarks/bench_oracle_gap.py --model runs/study/models/seed0
                                          [--hook blocks.0.hook_resid_post]

Per cell (width, k) and recipe: the SAEs' EV (mean over 3 seeds), the gap to the oracle (mean and
95% t-interval), the share of live rows near the truth (cosine >= 0.9 to an atom of the seed's
tiling), and the wall time. The rows "started at the truth" and "oracle + encoder" are the cell's
recipe from the tiling, and the tiling frozen with the recipe's encoder. Results go to BENCHMARKS.md
by hand.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch

from husai.analysis.compare import hook_ground_truth, model_context
from husai.analysis.ground_truth import group_grid, on_grid
from husai.analysis.optimisation_gap import (
    gap_stats,
    near_truth,
    oracle_with_encoder,
    started_at_truth,
    truth_start,
)
from husai.analysis.oracle import score, tiling, truth_circles
from husai.sae.config import SAETrainConfig
from husai.sae.metrics import reconstruction_metrics
from husai.sae.train import train_saes

SEEDS = [42, 123, 456]
BASE = dict(architecture="topk", epochs=10, optimizer="row_adam")  # the default study's TopK recipe
RECIPES = {
    "default study (10 epochs, lr 3e-3, batch 256)": {},
    "30 epochs": dict(epochs=30),
    "lr 1e-3": dict(lr=1e-3),
    "lr 1e-2": dict(lr=1e-2),
    "lr 3e-2": dict(lr=3e-2),
    "lr 1e-2, 30 epochs": dict(lr=1e-2, epochs=30),
    "batch 64": dict(batch_size=64),
    "batch 1024, 30 epochs": dict(batch_size=1024, epochs=30),
    "random init": dict(init="random"),
    "AuxK 1/8": dict(aux_coeff=0.125),
    "free decoder norms, b_dec 0 (SAELens)": dict(
        decoder_norm="rescale", decoder_init_norm=0.1, b_dec_init="zeros"
    ),
    "Matryoshka (BatchTopK, 2 levels)": dict(architecture="matryoshka", matryoshka_levels=2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--hook", default="blocks.0.hook_resid_post")
    ap.add_argument("--cells", default="64:8,256:32", help="width:k pairs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--recipes", default=None, help="recipe names to run, separated by ; (default: all)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    ctx = model_context(args.model, args.hook)
    gt = hook_ground_truth(ctx)
    grid = group_grid(ctx["p"], ctx.get("operation", "add"))
    X = on_grid(ctx["acts"], grid)
    circles = truth_circles(X, grid, gt.key_frequencies)
    acts = ctx["acts"].float()
    print(f"model {args.model}, hook {args.hook}, circles {[c.name for c in circles]}")
    print("| width | k | recipe | SAE EV | gap [95% CI] | near truth | s |")
    print("|---|---|---|---|---|---|---|")
    for cell in args.cells.split(","):
        width, k = map(int, cell.split(":"))
        tiled = [tiling(circles, width, s) for s in SEEDS]
        tilings = [D for D, _ in tiled]
        oracle = [score(X, D, k)["explained_variance"] for D in tilings]
        base = SAETrainConfig(**BASE, latents=width, k=k, trajectory_epochs=[])
        print(f"| {width} | {k} | oracle, best code | {sum(oracle) / 3:.4f} | | 1 | |")
        chosen = args.recipes.split(";") if args.recipes else list(RECIPES)
        for name, change in ((n, RECIPES[n]) for n in chosen):
            cfg = replace(base, **change)
            t0 = time.time()
            res = train_saes(acts, cfg, SEEDS)
            ev = reconstruction_metrics(res.sae, acts)["explained_variance"]
            with torch.no_grad():
                live = (res.sae.encode(acts) > 0).any(1)
            W = res.sae.unit_decoder().detach()
            near = sum(near_truth(W[s], D, live[s]) for s, D in enumerate(tilings)) / 3
            gap = gap_stats(oracle, ev)
            print(
                f"| {width} | {k} | {name} | {sum(ev) / 3:.4f} | {gap['mean']:+.4f} "
                f"[{gap['ci'][0]:+.4f}, {gap['ci'][1]:+.4f}] | {near:.2f} | "
                f"{time.time() - t0:.0f} |",
                flush=True,
            )
        for name, fn in (
            ("started at the truth", started_at_truth),
            ("oracle + the recipe's encoder", oracle_with_encoder),
        ):
            t0 = time.time()
            out = fn(acts, base, SEEDS, truth_start(acts, base, tiled))
            gap = gap_stats(oracle, out["explained_variance"])
            near = sum(out.get("near_truth", [float("nan")] * 3)) / 3
            print(
                f"| {width} | {k} | {name} | {sum(out['explained_variance']) / 3:.4f} | "
                f"{gap['mean']:+.4f} [{gap['ci'][0]:+.4f}, {gap['ci'][1]:+.4f}] | {near:.2f} | "
                f"{time.time() - t0:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
