"""SAE training throughput: husai (S seeds at once), husai (one seed at a time), SAELens's
SAETrainer.

All three train SAEs of one architecture (--architecture topk, relu or jumprelu) with the same
config (d_sae = expansion * d_in, k / L1 / L0 coefficient, batch size, lr, epochs, Adam) on the
same activations; SAELens's trainer is fed from an in-memory iterator that shuffles like husai
(one permutation per epoch). Prints samples/s per seed (inputs processed per second of wall time,
counted once per seed: S seeds trained together in T seconds on N inputs score S*N/T), and final
EV and L0 over all inputs for each. On a shared 2-core machine use --threads 1: with other
processes running, 2 intra-op threads can be many times slower.

    python benchmarks/bench_sae.py --transformer-checkpoint runs/model --epochs 5 --seeds 5
    python benchmarks/bench_sae.py --synthetic --epochs 2    # no model needed: random low-rank data
    python benchmarks/bench_sae.py --transformer-checkpoint runs/model --architecture relu
                                   --batch-size 64
    # medians of 3 interleaved runs:
    python benchmarks/bench_sae.py --transformer-checkpoint runs/model --repeats 3
"""

from __future__ import annotations

import argparse
import time

import torch


def get_activations(args) -> torch.Tensor:
    if args.synthetic or args.transformer_checkpoint is None:
        g = torch.Generator().manual_seed(0)  # [p^2, d_model] like layer-0 resid_post, low rank
        low_rank = torch.randn(12769, 32, generator=g) @ torch.randn(32, 128, generator=g)
        return low_rank + 0.1 * torch.randn(12769, 128, generator=g)
    from husai.sae.activations import model_activations

    acts, _ = model_activations(args.transformer_checkpoint, layer=args.layer)
    return acts


def ev_l0(encode, decode, x: torch.Tensor) -> tuple[float, float]:
    from husai.sae.metrics import explained_variance

    with torch.no_grad():
        z = encode(x)
        x_hat = decode(z)
    return float(explained_variance(x, x_hat)), float((z > 0).float().sum(-1).mean())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_husai(x, cfg, seeds: list[int], device: str = "cpu") -> dict:
    from husai.sae.train import train_saes

    _sync(device)
    t = time.perf_counter()
    res = train_saes(x, cfg, seeds, device=device)
    _sync(device)
    wall = time.perf_counter() - t
    xd = x.to(device)
    evs, l0s = zip(*[_ev_l0_slot(res.sae, s, xd) for s in range(len(seeds))])
    # Per-seed throughput: inputs processed per second summed over the seeds trained together
    # (S seeds in one pass each see every input, so the pass counts S times).
    return dict(
        wall_s=wall,
        samples_per_s_per_seed=x.shape[0] * cfg.epochs * len(seeds) / wall,
        ev=sum(evs) / len(evs),
        l0=sum(l0s) / len(l0s),
    )


def _ev_l0_slot(sae, s: int, x):
    one = sae.select(s)
    return ev_l0(one.encode, one.decode, x)


def saelens_sae(cfg, d_in: int):
    """SAELens's training SAE of the same architecture and loss as husai's cfg: TopK (AuxK),
    standard ReLU (decoder-norm-weighted L1, as husai's ReLUSAE) or JumpReLU (L0 with the step
    pseudo-derivative)."""
    import sae_lens as sl

    d_sae = cfg.d_sae(d_in)
    if cfg.architecture == "topk":
        return sl.TopKTrainingSAE(
            sl.TopKTrainingSAEConfig(
                d_in=d_in, d_sae=d_sae, k=cfg.k, aux_loss_coefficient=cfg.aux_coeff
            )
        )
    if cfg.architecture == "relu":
        return sl.StandardTrainingSAE(
            sl.StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=cfg.l1_coeff)
        )
    # SAELens's own threshold and bandwidth (0.01, 0.05): with husai's (1.0, 2.0, in this model's
    # activation units) its 0.1-norm init fires nothing on the fast model and every latent died
    # (L0 0, measured)
    return sl.JumpReLUTrainingSAE(
        sl.JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l0_coefficient=cfg.l0_coeff)
    )


def bench_saelens(x, cfg, seed: int, device: str = "cpu") -> dict:
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    torch.manual_seed(seed)
    d_in = x.shape[1]
    sae = saelens_sae(cfg, d_in).to(device)
    x = x.to(device)
    n, bs = x.shape[0], cfg.batch_size

    def batches():
        g = torch.Generator().manual_seed(
            seed if cfg.data_seed is None else cfg.data_seed
        )  # as husai: per seed by default
        while True:
            perm = torch.randperm(n, generator=g).to(device)
            for i in range(0, n - bs + 1, bs):  # SAELens needs full batches
                yield x[perm[i : i + bs]]

    total = (n // bs) * bs * cfg.epochs
    tcfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=bs,
        lr=cfg.learning_rate(d_in),
        lr_end=cfg.learning_rate(d_in),
        adam_beta1=cfg.beta1,
        adam_beta2=cfg.beta2,
        device=device,
        dead_feature_window=max(1, n // bs),
        feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(tcfg, sae, batches())
    _sync(device)
    t = time.perf_counter()
    trainer.fit()
    _sync(device)
    wall = time.perf_counter() - t
    sae.eval()
    ev, l0 = ev_l0(sae.encode, sae.decode, x)
    return dict(wall_s=wall, samples_per_s_per_seed=total / wall, ev=ev, l0=l0)


def _mean_row(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def _median_row(rows: list[dict]) -> dict:
    """The row whose throughput is the median (an odd count) or the lower middle one: its EV, L0 and
    wall come with it."""
    ordered = sorted(rows, key=lambda r: r["samples_per_s_per_seed"])
    return dict(ordered[(len(ordered) - 1) // 2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transformer-checkpoint", default=None)
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--expansion", type=int, default=16)
    ap.add_argument("--architecture", default="topk", choices=["topk", "relu", "jumprelu"])
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--l1-coeff", type=float, default=None, help="relu (default: husai's)")
    ap.add_argument("--l0-coeff", type=float, default=None, help="jumprelu (default: husai's)")
    ap.add_argument(
        "--saelens-coeff",
        type=float,
        default=None,
        help="SAELens's own L1 / L0 coefficient (relu / jumprelu), to match husai's L0: the two "
        "initialise the decoder differently (husai unit rows, SAELens norm 0.1), one coefficient "
        "gives two L0s",
    )
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--init", default="random", choices=["random", "data"])
    ap.add_argument(
        "--optimizer",
        default="adam",
        choices=["adam", "row_adam"],
        help="husai's optimizer; adam (not the library default) is the one SAELens's trainer runs",
    )
    ap.add_argument("--skip-saelens", action="store_true")
    ap.add_argument(
        "--device", default="cpu", help="cpu or cuda: every trainer runs there, data included"
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run every trainer this many times, interleaved, and report medians "
        "(a shared machine's speed drifts)",
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from husai.sae.config import SAETrainConfig

    x = get_activations(args)
    # init="random" (Gao et al.'s isotropic decoder) as SAELens does, so EVs are comparable after
    # a few epochs; husai's default data init needs ~20 epochs but leaves no dead latents.
    knobs = {
        k: v for k, v in (("l1_coeff", args.l1_coeff), ("l0_coeff", args.l0_coeff)) if v is not None
    }
    cfg = SAETrainConfig(
        architecture=args.architecture,
        expansion=args.expansion,
        k=args.k,
        epochs=args.epochs,
        init=args.init,
        optimizer=args.optimizer,
        batch_size=args.batch_size,
        **knobs,
    ).validate(x.shape[1])
    seeds = [42 + i for i in range(args.seeds)]
    print(
        f"{cfg.architecture}: activations {list(x.shape)}, d_sae {cfg.d_sae(x.shape[1])}, "
        f"k {cfg.k}, l1 {cfg.l1_coeff}, l0 {cfg.l0_coeff}, batch {cfg.batch_size}, "
        f"epochs {cfg.epochs}, lr {cfg.learning_rate(x.shape[1]):.2e}, threads {args.threads}, "
        f"device {args.device}"
    )
    from dataclasses import replace

    dev = args.device
    bench_husai(
        x[:1024], replace(cfg, epochs=1), seeds, dev
    )  # warm-up: first-call costs (allocator, BLAS init)
    # Each repeat runs every trainer once, one after another, so a slow spell of a shared machine
    # lands on all of them; the table reports each one's median over the repeats and the ratios of
    # medians.
    runs: dict[str, list[dict]] = {}
    theirs = (
        cfg
        if args.saelens_coeff is None
        else replace(cfg, l1_coeff=args.saelens_coeff, l0_coeff=args.saelens_coeff)
    )
    for _ in range(args.repeats):
        runs.setdefault(f"husai {len(seeds)} seeds at once", []).append(
            bench_husai(x, cfg, seeds, dev)
        )
        singles = [bench_husai(x, cfg, [s], dev) for s in seeds]
        runs.setdefault("husai one seed at a time", []).append(_mean_row(singles))
        if not args.skip_saelens:
            lens = [
                bench_saelens(x, theirs, s, dev) for s in seeds[:2]
            ]  # two seeds are enough for its mean speed
            runs.setdefault("SAELens SAETrainer, one seed", []).append(_mean_row(lens))
    rows = {
        name: dict(_median_row(rs), samples_per_s_runs=[r["samples_per_s_per_seed"] for r in rs])
        for name, rs in runs.items()
    }
    print(
        f"{'':34s} {'samples/s/seed':>15s} {'EV':>8s} {'L0':>7s} {'wall s':>8s}   "
        f"(medians of {args.repeats} repeat(s))"
    )
    for name, r in rows.items():
        spread = (
            ""
            if args.repeats == 1
            else f"   runs: {', '.join(f'{v:.0f}' for v in r['samples_per_s_runs'])}"
        )
        print(
            f"{name:34s} {r['samples_per_s_per_seed']:15.0f} {r['ev']:8.4f} {r['l0']:7.2f} "
            f"{r['wall_s']:8.2f}{spread}"
        )
    if "SAELens SAETrainer, one seed" in rows:
        ref = rows["SAELens SAETrainer, one seed"]["samples_per_s_per_seed"]
        print(
            "ratio to SAELens: "
            + ", ".join(
                f"{name} {r['samples_per_s_per_seed'] / ref:.2f}x"
                for name, r in rows.items()
                if not name.startswith("SAELens")
            )
        )
    if args.json:
        from husai.io import write_json

        write_json(
            args.json,
            dict(
                config=cfg.to_dict(),
                shape=list(x.shape),
                threads=args.threads,
                device=dev,
                results=rows,
            ),
        )


if __name__ == "__main__":
    main()
