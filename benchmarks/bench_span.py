"""Per-seed data order, the data-span projection and the optimizer (SAETrainConfig.data_seed,
.data_span, .optimizer), measured.

order: ms per training step with one shared batch (data_seed 0, x [B, d_in]), a batch per seed
(data_seed null, x [S, B, d_in]), a batch per seed with the data-span projection, and a batch per
seed with row_adam; the four alternate step by step (load from other processes hits all alike),
medians printed.

span: SAEs trained with each optimizer, data_span off and on, on the activations X, on X R (R a
random orthogonal matrix: torch.linalg.qr of a seeded Gaussian) and on X V (V the covariance
eigenvectors: the PCA basis, where coordinate variances run from hundreds down to ~1e-6). Per run,
means over seeds of: EV, L0 and frac_dead over all inputs (husai.sae.metrics), ms per step, the
share of each live latent's decoder (and encoder) row squared norm inside the span holding 99.9%
of the variance of the data it was trained on, and (rotated bases) rot_diff = max |W_dec(X) M -
W_dec(X M)| over every row of every seed, and rot_diff_median, the median over rows of each row's
max (compare with the "roundtrip" basis, X R R^T: training's own float32 chaos floor).

    python benchmarks/bench_span.py order --checkpoint runs/study/models/seed0
    python benchmarks/bench_span.py span --checkpoint runs/study/models/seed0
                                         --optimizers adam,row_adam
    python benchmarks/bench_span.py span --architecture relu --l1-coeff 25 --epochs 40
                                         --batch-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

HOOK = "blocks.0.hook_resid_post"


def bases(x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """name -> the [d, d] orthogonal matrix the activations are multiplied by. "roundtrip" is R R^T:
    the identity up to float32 rounding, so its rot_diff is the chaos floor (X perturbed by ~1e-7
    relative; a top-k choice between two pre-activations within rounding of each other flips)."""
    d = x.shape[1]
    xc = x.double() - x.double().mean(0)
    V = torch.linalg.eigh(xc.T @ xc).eigenvectors.flip(1).float()  # descending variance
    R = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0))).Q
    return {
        n: {"raw": torch.eye(d), "roundtrip": R @ R.T, "random_rotation": R, "pca": V}[n]
        for n in names
    }


def in_span_share(W: torch.Tensor, Q: torch.Tensor, live: torch.Tensor) -> float:
    """W [S, d_sae, d], Q [d, r], live [S, d_sae] -> mean over live rows of ||w Q||^2 / ||w||^2."""
    share = (W @ Q).pow(2).sum(-1) / W.pow(2).sum(-1).clamp_min(1e-30)
    return float(share[live].mean())


def run_span(
    x: torch.Tensor,
    cfg,
    seeds: list[int],
    names: list[str],
    spans: list,
    optimizers: list[str],
    lrs: list[float],
) -> list[dict]:
    from husai.sae.base import data_span_basis
    from husai.sae.metrics import reconstruct, reconstruction_metrics
    from husai.sae.train import train_saes

    rows, raw_dec = [], {}  # (optimizer, lr, span) -> W_dec trained on the first basis (raw)
    for name, M in bases(x, names).items():
        xb = x @ M
        Q = data_span_basis(xb, 0.999)
        for opt in optimizers:
            for lr in lrs:
                for span in spans:
                    res = train_saes(xb, replace(cfg, data_span=span, optimizer=opt, lr=lr), seeds)
                    m = reconstruction_metrics(res.sae, xb)
                    live = reconstruct(res.sae, xb)[1] > 0  # [S, d_sae]
                    W = res.sae.W_dec.detach()
                    ref = raw_dec.setdefault((opt, lr, span), (M, W))
                    # per row: max |W_dec(X) M - W_dec(X M)| over d_in; None on the first basis
                    row_diff = (
                        (ref[1] @ ref[0].T @ M - W).abs().amax(-1) if ref[1] is not W else None
                    )
                    rot_diff = None if row_diff is None else float(row_diff.max())
                    rot_med = None if row_diff is None else float(row_diff.median())
                    row = dict(
                        basis=name,
                        optimizer=opt,
                        lr=lr,
                        data_span=span,
                        r=Q.shape[1],
                        ms_per_step=1e3 * res.wall_seconds / res.steps,
                        **{
                            k: statistics.mean(m[k])
                            for k in ("explained_variance", "l0", "frac_dead")
                        },
                        dec_in_span=in_span_share(W, Q, live),
                        enc_in_span=in_span_share(res.sae.W_enc_T.detach(), Q, live),
                        rot_diff=rot_diff,
                        rot_diff_median=rot_med,
                        ev_per_seed=m["explained_variance"],
                    )
                    rows.append(row)
                    print(
                        f"{name:16s} {opt:8s} lr {lr:.0e} span {str(span):6s} "
                        f"EV {row['explained_variance']:.4f}  "
                        f"L0 {row['l0']:6.2f}  dead {row['frac_dead']:.3f}  "
                        f"ms/step {row['ms_per_step']:6.2f}  "
                        f"dec in span {row['dec_in_span']:.4f}  "
                        f"enc in span {row['enc_in_span']:.4f}  "
                        f"rot_diff {'-' if rot_diff is None else f'{rot_diff:.1e}'}  "
                        f"median row {'-' if rot_med is None else f'{rot_med:.1e}'}  "
                        f"(r = {row['r']})",
                        flush=True,
                    )
    return rows


def run_order(x: torch.Tensor, cfg, seeds: list[int], steps: int) -> dict:
    """Training steps (loss, backward, optimizer, [projection,] renormalisation) timed alternately
    on a shared batch x [B, d_in], on a batch per seed x [S, B, d_in], on a batch per seed with the
    data-span projection (0.999), and on a batch per seed with row_adam, so that load from other
    processes hits all alike; no latent is dead (no AuxK); the first 10 steps of each are a
    warm-up."""
    from husai.sae.base import data_span_basis
    from husai.sae.optim import make_optimizer
    from husai.sae.train import init_saes

    torch.set_flush_denormal(True)
    S, B = len(seeds), cfg.batch_size
    Q = data_span_basis(x, 0.999)
    variants = {
        "shared (data_seed 0)": (False, None, "adam"),
        "per seed (data_seed null)": (True, None, "adam"),
        "per seed + data_span 0.999": (True, Q, "adam"),
        "per seed, row_adam": (True, None, "row_adam"),
    }
    saes = {
        name: init_saes(x, replace(cfg, data_span=None if q is None else 0.999), seeds)
        for name, (_, q, _) in variants.items()
    }
    opts = {
        name: make_optimizer(saes[name], opt, cfg.learning_rate(x.shape[1]), (cfg.beta1, cfg.beta2))
        for name, (_, _, opt) in variants.items()
    }
    dead = torch.zeros(S, cfg.d_sae(x.shape[1]), dtype=torch.bool)
    gen = torch.Generator().manual_seed(0)
    times = {name: [] for name in variants}
    for _ in range(steps + 10):
        idx = torch.randint(x.shape[0], (S, B), generator=gen)
        for name, (per_seed, q, _) in variants.items():
            sae, opt = saes[name], opts[name]
            t = time.perf_counter()
            loss, stats = sae.training_loss(x[idx] if per_seed else x[idx[0]], dead)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grads()
            opt.step()
            if q is not None:
                sae.project_rows(q)
            sae.after_step(stats)
            times[name].append(1e3 * (time.perf_counter() - t))
    for name, t in times.items():
        t[:] = t[10:]
        q = statistics.quantiles(t, n=4)
        print(
            f"{name:28s} median {statistics.median(t):6.2f} ms/step  "
            f"(quartiles {q[0]:.2f}, {q[2]:.2f})"
        )
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["order", "span"])
    ap.add_argument("--checkpoint", default="runs/study/models/seed0")
    ap.add_argument("--architecture", default="topk")
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--l1-coeff", type=float, default=25.0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seeds", default="42,123,456,789,1011", help="SAE seeds, comma-separated")
    ap.add_argument("--steps", type=int, default=100, help="order: timed steps of each kind")
    ap.add_argument(
        "--bases",
        default="raw,random_rotation,pca",
        help="raw first: the others are compared to it",
    )
    ap.add_argument(
        "--spans", default="none,0.999", help="data_span values to train with (none = off)"
    )
    ap.add_argument(
        "--optimizers", default="adam", help="span: optimizers to train with (adam, row_adam)"
    )
    ap.add_argument("--lrs", default="3e-3", help="span: learning rates to train with")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from husai.sae.activations import model_activations
    from husai.sae.config import SAETrainConfig

    x, _ = model_activations(args.checkpoint, hook=HOOK, split="all")
    epochs = args.epochs
    cfg = SAETrainConfig(
        architecture=args.architecture,
        expansion=args.expansion,
        k=args.k,
        l1_coeff=args.l1_coeff,
        epochs=epochs,
        batch_size=args.batch_size,
        trajectory_epochs=[],
    ).validate(x.shape[1])
    seeds = [int(v) for v in args.seeds.split(",")]
    print(
        f"activations {list(x.shape)}, {args.architecture} x{args.expansion}, epochs {epochs}, "
        f"batch {args.batch_size}, seeds {seeds}, threads {args.threads}",
        flush=True,
    )
    t = time.perf_counter()
    out = (
        run_order(x, cfg, seeds, args.steps)
        if args.mode == "order"
        else run_span(
            x,
            cfg,
            seeds,
            args.bases.split(","),
            [None if v == "none" else float(v) for v in args.spans.split(",")],
            args.optimizers.split(","),
            [float(v) for v in args.lrs.split(",")],
        )
    )
    print(f"total {time.perf_counter() - t:.0f} s")
    if args.json:
        from husai.io import write_json

        write_json(
            args.json, dict(config=cfg.to_dict(), seeds=seeds, threads=args.threads, results=out)
        )


if __name__ == "__main__":
    main()
