"""Train many cells of a sweep on the same activations: cells whose configs differ only in k (TopK,
BatchTopK, Matryoshka) or only in their seeds share one pass, one StackedSAE with a k per slot;
every other cell trains on its own.

    cells = [(cfg_k8, [1, 2, 3]), (cfg_k32, [1, 2, 3])]    ->  one pass over 6 slots
    train_cells(acts, cells)                                ->  [TrainResult per cell]

A slot trains exactly as it would alone up to float rounding: each slot's loss and batch order are
its own (husai.sae.train), and a slot with k below the pass's widest keeps its own k largest
entries, the others entering the sparse step with value 0 (no output, no gradient;
TopKSAE._per_slot). What is shared: the Python loop, and a divergence (a non-finite loss in any slot
stops the pass, as it stops a multi-seed run). What it costs: every slot pays the widest k's sparse
work. Measured in BENCHMARKS.md (benchmarks/bench_cells.py): whether one pass beats one pass per
cell depends on the width, so `group` says which cells may share and the caller decides.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from husai.sae.config import SAETrainConfig
from husai.sae.train import TrainResult, train_saes


def group_key(cfg: SAETrainConfig) -> str:
    """Cells with the same key can share a pass: configs equal but for the family's sparsity key
    (k for the TopK family; equal configs of any architecture simply stack their seeds)."""
    return repr(sorted(replace(cfg, **{cfg.family.sparsity_key: 0}).to_dict().items()))


def group(cells: list[tuple[SAETrainConfig, list[int]]]) -> list[list[int]]:
    """Indices of `cells` in passes: cells with equal group_key together, in their first cell's
    order."""
    passes: dict = {}
    for i, (cfg, _) in enumerate(cells):
        passes.setdefault(group_key(cfg), []).append(i)
    return list(passes.values())


def train_cells(
    acts: torch.Tensor,
    cells: list[tuple[SAETrainConfig, list[int]]],
    device: str = "cpu",
    passes: list[list[int]] | None = None,
) -> list[TrainResult]:
    """Train every (config, seeds) cell on acts [N, d_in] -> one TrainResult per cell, in order.
    passes: which cells share a pass (default: group(cells), every compatible cell together)."""
    d_in = acts.shape[1]
    for cfg, _ in cells:
        cfg.validate(d_in)
    results: list[TrainResult | None] = [None] * len(cells)
    for members in passes if passes is not None else group(cells):
        if len({group_key(cells[i][0]) for i in members}) != 1:
            raise ValueError(f"cells {members} cannot share a pass (configs differ beyond k)")
        seeds = [s for i in members for s in cells[i][1]]
        cfg = cells[members[0]][0]
        key = cfg.family.sparsity_key
        ks = [getattr(cells[i][0], key) for i in members for _ in cells[i][1]]
        per_slot = len(set(ks)) > 1
        res = train_saes(acts, cfg, seeds, device, knobs=ks if per_slot else None)
        start = 0
        for i in members:
            results[i] = _slots(res, list(range(start, start + len(cells[i][1]))))
            start += len(cells[i][1])
    return results


def _slots(res: TrainResult, slots: list[int]) -> TrainResult:
    """The part of a pass's result that belongs to these slots (wall_seconds: the whole pass's)."""

    def cut(row: dict) -> dict:
        return {k: [v[s] for s in slots] if isinstance(v, list) else v for k, v in row.items()}

    idx = torch.tensor(slots)
    return TrainResult(
        res.sae.subset(slots),
        [res.seeds[s] for s in slots],
        res.W_dec_init[idx],
        res.steps,
        res.wall_seconds,
        res.diverged_at_step,
        [cut(r) for r in res.history],
        {e: {k: v[idx] for k, v in snap.items()} for e, snap in res.trajectory.items()},
    )
