"""Per-epoch training step: husai's model vs the TransformerLens recipe, same config and data.

    python benchmarks/bench_model.py [--run runs/model] [--p 113] [--train-frac 0.5] [--steps 20]

Both models start from the same weights (and, with --run, the same AdamW state from the run's
last checkpoint, where weight decay 1.0 has pushed the optimizer state towards denormals), take
full-batch AdamW steps (lr 1e-3, wd 1.0, betas (0.9, 0.98)) on the same training split with a
float64 cross-entropy, and are timed in this one process at 1 and 2 threads. TransformerLens is
run as its users run it (logits at every position, sliced at `=`), with denormal flushing off and
on in the main thread. `import husai` switches flushing on before torch's thread pool starts, so
TransformerLens's worker threads here flush too: the TL columns are, if anything, flattered.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from husai.io import load_tensors
from husai.model.checkpoint import TL_FIELDS
from husai.model.data import make_dataset
from husai.model.train import _latest_checkpoint
from husai.model.transformer import ModelConfig, Transformer


def time_steps(step, n: int) -> float:
    for _ in range(3):
        step()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def make_step(named_params, forward, x, y, state):
    """One full-batch AdamW step; `state` (from a husai checkpoint) seeds the optimizer moments."""
    names, params = zip(*named_params)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    if state is not None:
        opt.load_state_dict(
            {
                "state": {
                    i: {
                        k: state[f"optim.{n}.{k}"].clone()
                        for k in ("step", "exp_avg", "exp_avg_sq")
                    }
                    for i, n in enumerate(names)
                },
                "param_groups": opt.state_dict()["param_groups"],
            }
        )

    def step():
        loss = F.cross_entropy(forward(x).to(torch.float64), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--run", type=Path, default=None, help="a train-model run: start from its last checkpoint"
    )
    ap.add_argument("--p", type=int, default=113)
    ap.add_argument("--train-frac", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model_cfg = ModelConfig(p=args.p)
    husai = Transformer(model_cfg).init_weights(0)
    state = None
    if args.run is not None:
        tensors, _ = load_tensors(_latest_checkpoint(args.run))
        husai.load_state_dict({k: tensors[k] for k in husai.state_dict()})
        state = tensors
    data = make_dataset(args.p, args.train_frac, 0)
    x, y = data.tokens[data.train_idx], data.labels[data.train_idx]
    cfg = model_cfg.to_hooked_transformer_config()
    print(
        f"p={args.p}, {len(x)} training pairs (full batch), "
        f"start: {'checkpoint of ' + str(args.run) if state else 'init'}"
    )
    print(
        f"{'threads':>7} {'husai ms':>9} {'TL ms':>9} {'TL+flush ms':>12} "
        f"{'TL/husai':>9} {'(TL+flush)/husai':>17}"
    )
    for threads in (1, 2):
        torch.set_num_threads(threads)
        res = {}
        for name, flush in (("husai", True), ("tl", False), ("tl_flush", True)):
            torch.set_flush_denormal(flush)
            if name == "husai":
                m = Transformer(model_cfg)
                m.load_state_dict(husai.state_dict())
                forward = m  # logits at `=` only
            else:
                m = HookedTransformer(HookedTransformerConfig(**{k: cfg[k] for k in TL_FIELDS}))
                m.load_state_dict(husai.state_dict(), strict=False)
                forward = lambda t, m=m: m(t)[:, -1]  # noqa: E731  logits everywhere, sliced at `=`
            # Nanda's setup trains the matrices only (biases frozen at zero): same tensors in both.
            named = [
                (n, prm) for n, prm in m.named_parameters() if n in dict(husai.named_parameters())
            ]
            for n, prm in m.named_parameters():
                prm.requires_grad_(any(n == k for k, _ in named))
            res[name] = time_steps(make_step(named, forward, x, y, state), args.steps)
        torch.set_flush_denormal(False)
        print(
            f"{threads:>7} {res['husai'] * 1e3:>9.1f} {res['tl'] * 1e3:>9.1f} "
            f"{res['tl_flush'] * 1e3:>12.1f} "
            f"{res['tl'] / res['husai']:>9.2f} {res['tl_flush'] / res['husai']:>17.2f}"
        )


if __name__ == "__main__":
    main()
