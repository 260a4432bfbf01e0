"""The CUDA path against the CPU path: the same SAEs from the same seeds, and their step times.

    python benchmarks/bench_cuda.py [--transformer-checkpoint runs/model] [--epochs 3]

For each architecture, trains 2 seeds on the CPU and on CUDA from the same init and batch order
(both come from CPU generators, so they are identical) and prints EV and L0 on each device, the
largest decoder-row difference (1 - cos, over all latents) and the wall time of each. float32
matmuls sum in different orders on the two devices, so weights drift apart slowly; TopK's choice
of k can flip on near-ties and amplify that. What must hold is the same EV and L0 to ~1e-3. Needs a
CUDA device; the project itself never does.
"""

from __future__ import annotations

import argparse
import time

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--transformer-checkpoint", default=None, help="default: synthetic low-rank data"
    )
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    torch.set_flush_denormal(True)
    from bench_sae import ev_l0, get_activations

    from husai.sae.config import SAETrainConfig
    from husai.sae.train import train_saes

    args.synthetic, args.layer = args.transformer_checkpoint is None, 0
    x = get_activations(args)
    # label -> config keys; the free-norm rows cover the rescaled sparse path and the fold at the
    # end
    knobs = {
        "topk": dict(architecture="topk"),
        "batchtopk": dict(architecture="batchtopk"),
        "matryoshka": dict(architecture="matryoshka"),
        "topk rescale": dict(architecture="topk", decoder_norm="rescale", decoder_init_norm=0.1),
        "batchtopk resc": dict(
            architecture="batchtopk", decoder_norm="rescale", decoder_init_norm=0.1
        ),
        "relu": dict(architecture="relu", l1_coeff=2.5, batch_size=64),
        "jumprelu": dict(architecture="jumprelu", l0_coeff=2.0, batch_size=64),
    }
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else args.device
    print(f"activations {list(x.shape)}, {args.epochs} epochs, seeds 0 and 1, device {name}")
    print(
        f"{'architecture':14s} {'EV cpu':>8s} {'EV cuda':>8s} {'L0 cpu':>8s} {'L0 cuda':>8s} "
        f"{'max 1-cos':>10s} "
        f"{'wall cpu':>9s} {'wall cuda':>9s}"
    )
    for arch, extra in knobs.items():
        cfg = SAETrainConfig(expansion=16, k=32, epochs=args.epochs, **extra).validate(x.shape[1])
        res, walls = {}, {}
        for dev in dict.fromkeys(("cpu", args.device)):
            train_saes(x[:512], cfg, [0], device=dev)  # warm-up
            sync()
            t = time.perf_counter()
            res[dev] = train_saes(x, cfg, [0, 1], device=dev)
            sync()
            walls[dev] = time.perf_counter() - t
        figs = {
            dev: [ev_l0(r.sae.select(s).encode, r.sae.select(s).decode, x.to(dev)) for s in (0, 1)]
            for dev, r in res.items()
        }
        a, b = res["cpu"].sae.W_dec.detach(), res[args.device].sae.W_dec.detach().cpu()
        drift = float((1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)).max())
        mean = lambda dev, i: sum(f[i] for f in figs[dev]) / 2
        print(
            f"{arch:14s} {mean('cpu', 0):8.4f} {mean(args.device, 0):8.4f} {mean('cpu', 1):8.2f} "
            f"{mean(args.device, 1):8.2f} {drift:10.2e} "
            f"{walls['cpu']:9.2f} {walls[args.device]:9.2f}"
        )


if __name__ == "__main__":
    main()
