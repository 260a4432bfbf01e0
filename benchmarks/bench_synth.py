"""SynthSAEBench as an external check: husai's TopK, BatchTopK and Matryoshka trainers against
SAELens's own SAETrainer on SAELens's synthetic data, both scored by SAELens's own evaluation (MCC,
F1, dead latents).

1. SAELens builds the world (`sae_lens.synthetic.SyntheticModel`): SynthSAEBench-16k's recipe
   (Zipfian firing, exponent 0.5, p 0.4 .. 5e-4; a forest of 4-ary trees, depth 3, mutually
   exclusive children; low-rank correlations, rank 25, scale 0.1; orthogonalised directions, 100
   steps, lr 3e-4; magnitudes linear 5 -> 4 with folded-normal std, mean 0.5, sd 0.5), scaled down
   to fit 2 CPU cores: --features ground-truth directions in --hidden-dim dimensions (16k: 16,384 in
   768), one tree per 128 features (16k: 128 trees), and compensate_probabilities on, because with a
   few hundred thousand samples instead of 16k's 200M the hierarchy's gating left most features
   nearly unseen (1,024 features, 60,000 samples: 56% fired fewer than 20 times without it, none
   with it).
2. It draws --train-samples activations once (the global torch RNG, seeded) and writes them as a
   husai activation file.
3. husai trains every architecture through the real command line, one process per architecture, all
   seeds in one pass: `python -m husai.cli train-sae --activations FILE --config YAML --seeds ...`,
   the YAML being configs/examples/<arch>_16x.yaml with width (latents), k, lr, batch, epochs and
   init replaced. --husai-inits: `random` (isotropic unit rows, W_enc = W_dec^T: the kind of init
   SAELens uses) and `data` (the example configs' choice, made for the grokked model's low-rank
   activations).
4. SAELens trains the same architecture on the same activations (`SAETrainer`, fed the same tensor,
   reshuffled every epoch) at the same width, k, lr, batch size, Adam betas and number of samples,
   with its own defaults for the rest (decoder init norm 0.1, decoder-norm rescaling, AuxK
   coefficient 1); Matryoshka gets husai's level widths. It saves its inference SAE (BatchTopK and
   Matryoshka as JumpReLU with the learned threshold, as husai does).
5. Every saved SAE is loaded with `sae_lens.SAE.load_from_disk` and scored by
   `sae_lens.synthetic.eval_sae_on_synthetic_data` on --eval-samples fresh draws from the world, the
   same draws for all (drawn once, handed out again for each SAE: Replay).

    python benchmarks/bench_synth.py                                   # the BENCHMARKS.md table
    python benchmarks/bench_synth.py --architectures topk --seeds 2    # quicker

tests/sae/test_sae_synthbench.py runs a small version and asserts husai's MCC is at least SAELens's.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ARCHITECTURES = ("topk", "batchtopk", "matryoshka")
# --husai-settings tuned: each architecture's better husai setting measured on this benchmark
# (BENCHMARKS.md, "SynthSAEBench"): TopK trained with SAELens's parametrization (free decoder norms
# from 0.1, b_dec from zeros), BatchTopK and Matryoshka with husai's defaults (unit rows,
# geometric-median b_dec).
TUNED = {"topk": dict(decoder_norm="rescale", decoder_init_norm=0.1, b_dec_init="zeros")}
METRICS = ("mcc", "f1", "precision", "recall", "dead", "l0", "ev")
EVAL_CHUNK = 10_000  # evaluation draws per batch


def world_config(features: int, hidden_dim: int, seed: int):
    """SynthSAEBench-16k's SyntheticModelConfig, scaled (module docstring)."""
    import sae_lens.synthetic as syn

    return syn.SyntheticModelConfig(
        num_features=features,
        hidden_dim=hidden_dim,
        firing_probability=syn.ZipfianFiringProbabilityConfig(
            exponent=0.5, max_prob=0.4, min_prob=5e-4
        ),
        hierarchy=syn.HierarchyConfig(
            total_root_nodes=max(1, features // 128),
            branching_factor=4,
            max_depth=3,
            mutually_exclusive_portion=1.0,
            compensate_probabilities=True,
        ),
        orthogonalization=syn.OrthogonalizationConfig(num_steps=100, lr=3e-4),
        correlation=syn.LowRankCorrelationConfig(rank=25, correlation_scale=0.1),
        mean_firing_magnitudes=syn.LinearMagnitudeConfig(start=5.0, end=4.0),
        std_firing_magnitudes=syn.FoldedNormalMagnitudeConfig(mean=0.5, std=0.5),
        seed=seed,
    )


def build_world(cfg):
    """-> sae_lens.synthetic.SyntheticModel. Its orthogonalisation always draws a tqdm bar: kept off
    stderr."""
    import logging

    from sae_lens.synthetic import SyntheticModel

    logging.getLogger("sae_lens").setLevel(
        logging.ERROR
    )  # the clamped-probabilities warning of compensation
    with contextlib.redirect_stderr(io.StringIO()):
        return SyntheticModel(cfg)


@torch.no_grad()
def draw(world, n: int, seed: int, chunk: int = 10_000) -> tuple[torch.Tensor, float]:
    """n activations [n, hidden_dim] (SAELens samples from the global torch RNG, seeded here) and
    the data's true L0 (mean number of active ground-truth features)."""
    torch.manual_seed(seed)
    parts, active = [], 0.0
    for i in range(0, n, chunk):  # the feature activations are dense [chunk, features]
        x, f = world.sample_with_features(min(chunk, n - i))
        parts.append(x)
        active += float((f > 0).sum())
    return torch.cat(parts), active / n


class Replay:
    """SAELens's ActivationGenerator, drawn once: `sample(n)` hands out the stored chunks in order,
    so that eval_sae_on_synthetic_data scores every SAE on the same draws without generating them
    again (a 10,000-sample draw of 1,024 features takes ~1 s). Chunks are kept sparse."""

    def __init__(self, generator, n: int, seed: int, chunk: int):
        torch.manual_seed(seed)
        self.chunks = [generator.sample(min(chunk, n - i)).to_sparse() for i in range(0, n, chunk)]
        self.next = 0

    def rewind(self) -> "Replay":
        self.next = 0
        return self

    def sample(self, n: int) -> torch.Tensor:
        out = self.chunks[self.next].to_dense()
        assert out.shape[0] == n, (
            "eval_sae_on_synthetic_data asked for another batch size than was stored"
        )
        self.next += 1
        return out


def matryoshka_levels(width: int, levels: int) -> list[int]:
    from husai.sae.batchtopk import matryoshka_widths

    return matryoshka_widths(width, levels)


def husai_yaml(arch: str, init: str, args, path: Path) -> dict:
    """configs/examples/<arch>_16x.yaml with the benchmark's width, k, lr, batch, epochs and
    init."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "examples" / f"{arch}_16x.yaml").read_text())
    cfg.pop("expansion", None)
    cfg.update(
        latents=args.width,
        k=args.k,
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=args.epochs,
        init=init,
        trajectory_epochs=[],
    )
    if args.husai_settings == "tuned":
        cfg.update(TUNED.get(arch, {}))
    cfg.update(args.husai_set)
    path.write_text(yaml.safe_dump(cfg))
    return cfg


def train_husai(arch: str, init: str, acts_file: Path, args, out: Path) -> float:
    """`husai train-sae --activations` in its own process, every seed in one pass -> wall
    seconds."""
    yaml_file = out.parent / f"{out.name}.yaml"
    husai_yaml(arch, init, args, yaml_file)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    cmd = [
        sys.executable,
        "-m",
        "husai.cli",
        "train-sae",
        "--activations",
        str(acts_file),
        "--config",
        str(yaml_file),
        "--seeds",
        ",".join(map(str, args.seed_list)),
        "--save-dir",
        str(out),
        "--quiet",
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"husai train-sae failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - t


def saelens_sae(arch: str, d_in: int, args):
    """SAELens's training SAE of the same architecture, width and k; SAELens's defaults
    otherwise."""
    import sae_lens as sl

    if arch == "topk":
        return sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(d_in=d_in, d_sae=args.width, k=args.k))
    if arch == "batchtopk":
        return sl.BatchTopKTrainingSAE(
            sl.BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=args.width, k=float(args.k))
        )
    return sl.MatryoshkaBatchTopKTrainingSAE(
        sl.MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=args.width,
            k=float(args.k),
            matryoshka_widths=matryoshka_levels(args.width, args.levels),
        )
    )


def train_saelens(arch: str, x: torch.Tensor, seed: int, args, out: Path) -> float:
    """SAELens's SAETrainer on x [N, d_in] for args.epochs passes (full batches, reshuffled every
    epoch) -> wall seconds; saves the inference SAE to out."""
    from sae_lens import SAETrainer
    from sae_lens.config import LoggingConfig, SAETrainerConfig

    torch.manual_seed(seed)
    sae = saelens_sae(arch, x.shape[1], args)
    n, bs = x.shape[0], args.batch_size

    def batches():
        g = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - bs + 1, bs):
                yield x[perm[i : i + bs]]

    tcfg = SAETrainerConfig(
        total_training_samples=(n // bs) * bs * args.epochs,
        train_batch_size_samples=bs,
        lr=args.lr,
        lr_end=args.lr,
        adam_beta1=0.9,
        adam_beta2=0.999,
        device="cpu",
        dead_feature_window=max(1, n // bs),
        feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False),
    )
    t = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
        SAETrainer(tcfg, sae, batches()).fit()
    wall = time.perf_counter() - t
    sae.save_inference_model(str(out))
    return wall


def score(folder: Path, world, draws: Replay, args) -> dict:
    """SAELens's own evaluation of the SAE saved in folder, on args.eval_samples fresh draws (the
    same draws for every SAE)."""
    from sae_lens import SAE
    from sae_lens.synthetic import eval_sae_on_synthetic_data

    sae = SAE.load_from_disk(str(folder))
    r = eval_sae_on_synthetic_data(
        sae,
        world.feature_dict,
        draws.rewind(),
        num_samples=args.eval_samples,
        batch_size=EVAL_CHUNK,
    )
    c = r.classification
    return dict(
        mcc=r.mcc,
        f1=c.f1_score,
        precision=c.precision,
        recall=c.recall,
        dead=r.dead_latents,
        l0=r.sae_l0,
        ev=r.explained_variance,
        uniqueness=r.uniqueness,
        true_l0=r.true_l0,
    )


def _folder(root: Path, seed: int, n_seeds: int) -> Path:
    return root if n_seeds == 1 else root / f"seed_{seed}"


def run(args, work: Path) -> dict:
    world = build_world(world_config(args.features, args.hidden_dim, args.world_seed))
    x, true_l0 = draw(world, args.train_samples, args.data_seed)
    draws = Replay(world.activation_generator, args.eval_samples, args.eval_seed, EVAL_CHUNK)
    from husai.sae.activations import save_activations

    acts_file = work / "synth_acts.safetensors"
    save_activations(acts_file, x, dict(source="sae_lens.synthetic", features=args.features))
    results = dict(
        world=dict(
            features=args.features,
            hidden_dim=args.hidden_dim,
            world_seed=args.world_seed,
            train_samples=args.train_samples,
            true_l0_train=true_l0,
        ),
        sae=dict(
            width=args.width,
            k=args.k,
            lr=args.lr,
            batch_size=args.batch_size,
            epochs=args.epochs,
            husai_settings=args.husai_settings,
            husai_set=args.husai_set,
            seeds=args.seed_list,
            matryoshka_widths=matryoshka_levels(args.width, args.levels),
        ),
        trainers={},
        rows={},
    )
    for arch in args.architectures:
        row = results["rows"][arch] = {}
        for init in args.husai_inits:
            out = work / f"husai_{arch}_{init}"
            wall = train_husai(arch, init, acts_file, args, out)
            row[f"husai_{init}"] = dict(
                scores=[
                    score(_folder(out, s, len(args.seed_list)), world, draws, args)
                    for s in args.seed_list
                ],
                wall_s=wall,
            )
            results["trainers"][f"husai_{init}"] = (
                f"husai (init {init}, {len(args.seed_list)} seeds in one process)"
            )
        scores, wall = [], 0.0
        for s in args.seed_list:
            wall += train_saelens(arch, x, s, args, work / f"saelens_{arch}_{s}")
            scores.append(score(work / f"saelens_{arch}_{s}", world, draws, args))
        row["saelens"] = dict(scores=scores, wall_s=wall)
        results["trainers"]["saelens"] = "SAELens SAETrainer (one seed at a time)"
        print(
            "  "
            + arch
            + ": MCC "
            + ", ".join(
                f"{k} {_mean(v['scores'], 'mcc'):.4f} ({v['wall_s']:.0f} s)" for k, v in row.items()
            ),
            flush=True,
        )
    results["true_l0_eval"] = scores[0]["true_l0"]
    return results


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(r[key] for r in rows)


def _sd(rows: list[dict], key: str) -> float:
    return statistics.stdev(r[key] for r in rows) if len(rows) > 1 else 0.0


def table(results: dict) -> str:
    """Markdown table: per architecture and trainer, mean +- sd over seeds; then each
    husai - SAELens."""
    lines = [
        (
            "| architecture | trainer | MCC | F1 | precision | recall | dead latents | L0 | EV "
            "| train s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, row in results["rows"].items():
        for key, r in row.items():
            rs = r["scores"]
            cells = [
                f"{_mean(rs, m):.3f} ± {_sd(rs, m):.3f}"
                for m in ("mcc", "f1", "precision", "recall")
            ]
            cells += [
                f"{_mean(rs, 'dead'):.1f}",
                f"{_mean(rs, 'l0'):.1f}",
                f"{_mean(rs, 'ev'):.3f}",
                f"{r['wall_s']:.0f}",
            ]
            lines.append(f"| {arch} | {results['trainers'][key]} | " + " | ".join(cells) + " |")
        for key in (k for k in row if k != "saelens"):
            d = {
                m: _mean(row[key]["scores"], m) - _mean(row["saelens"]["scores"], m)
                for m in METRICS
            }
            lines.append(
                f"| {arch} | {key.replace('_', ' init ')} - SAELens | {d['mcc']:+.3f} | "
                f"{d['f1']:+.3f} | {d['precision']:+.3f} | {d['recall']:+.3f} | {d['dead']:+.1f} | "
                f"{d['l0']:+.1f} | {d['ev']:+.3f} | |"
            )
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--features", type=int, default=1024, help="ground-truth features (16k: 16,384)"
    )
    ap.add_argument("--hidden-dim", type=int, default=64, help="activation dimension (16k: 768)")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--train-samples", type=int, default=100_000)
    ap.add_argument("--eval-samples", type=int, default=50_000)
    ap.add_argument("--data-seed", type=int, default=1, help="seeds the training draws")
    ap.add_argument("--eval-seed", type=int, default=2, help="seeds the evaluation draws")
    ap.add_argument(
        "--width", type=int, default=256, help="SAE latents (16k's SAEs: a quarter of the features)"
    )
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--levels", type=int, default=4, help="Matryoshka levels (husai's default)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--husai-inits",
        default="random,data",
        help="husai decoder inits to run: random (isotropic, W_enc = W_dec^T: SAELens's kind) "
        "and/or data (the example configs' default, made for the grokked model's low-rank "
        "activations)",
    )
    ap.add_argument(
        "--husai-settings",
        choices=("tuned", "defaults"),
        default="tuned",
        help="tuned: each architecture's better setting on this benchmark (TUNED: TopK with free "
        "decoder norms from 0.1 and b_dec from zeros, as SAELens trains it); defaults: husai's "
        "config defaults",
    )
    ap.add_argument(
        "--husai-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another husai config key for every husai run (a YAML value), "
        "e.g. decoder_norm=rescale; repeatable",
    )
    ap.add_argument("--architectures", default=",".join(ARCHITECTURES))
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both trainers")
    ap.add_argument(
        "--work",
        default=None,
        help="folder for the activation file and SAEs (default: a temporary one)",
    )
    ap.add_argument("--json", default=None, help="also write every per-seed score here")
    args = ap.parse_args(argv)
    args.architectures = [a for a in args.architectures.split(",") if a]
    if not set(args.architectures) <= set(ARCHITECTURES):
        ap.error(f"--architectures: choose from {', '.join(ARCHITECTURES)}")
    args.husai_inits = [i for i in args.husai_inits.split(",") if i]
    if not args.husai_inits or not set(args.husai_inits) <= {"random", "data"}:
        ap.error("--husai-inits: random, data or both")
    args.seed_list = [42 + i for i in range(args.seeds)]
    import yaml

    pairs = [kv.partition("=") for kv in args.husai_set]
    if any(not key or not sep for key, sep, _ in pairs):
        ap.error("--husai-set: write KEY=VALUE")
    args.husai_set = {key: yaml.safe_load(value) for key, _, value in pairs}
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    import tempfile

    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = (
            Path(args.work)
            if args.work
            else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        work.mkdir(parents=True, exist_ok=True)
        print(
            f"SynthSAEBench world: {args.features} features in {args.hidden_dim} dims; "
            f"SAEs: {args.width} latents, k {args.k}, lr {args.lr}, batch {args.batch_size}, "
            f"{args.epochs} epochs of {args.train_samples} samples, seeds {args.seed_list}, "
            f"{args.threads} thread(s); husai settings {args.husai_settings}"
            + "".join(
                f"; {a}: {TUNED[a]}"
                for a in args.architectures
                if args.husai_settings == "tuned" and a in TUNED
            )
            + (f"; every husai run: {args.husai_set}" if args.husai_set else ""),
            flush=True,
        )
        results = run(args, work)
    results["wall_s"] = time.perf_counter() - t0
    print(
        f"true L0: {results['world']['true_l0_train']:.2f} (training draws), "
        f"{results['true_l0_eval']:.2f} (eval draws); "
        f"scored by sae_lens.synthetic.eval_sae_on_synthetic_data on {args.eval_samples} draws"
    )
    print(table(results))
    print(f"total {results['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
