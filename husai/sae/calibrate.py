"""The penalty weight that gives a ReLU / JumpReLU SAE a requested L0 (SAETrainConfig.target_l0).

A comparison across architectures is fair only at matched L0, and the TopK family sets its L0
directly with k. For the penalised architectures L0 falls as the weight rises, but how fast depends
on the data, the width, the optimiser and the training length, so it is measured rather than
assumed: one pass trains the weights c0 * FACTORS side by side (one slot each, all with the cell's
first seed: the same init and batch order) for the cell's full epochs, and measures each one's L0
over all inputs. If the target lies between two of them, log weight is interpolated linearly in
log L0 between the two; otherwise the grid moves past its end and another pass runs, up to ROUNDS.

Why the full epochs: L0 keeps falling for tens of epochs at a fixed weight (ReLU 16x, l1 10,
row_adam lr 1e-2, batch 64: L0 545 after 2 epochs, 219 after 10, 134 after 20), so a shorter
search picks a weight that is too small. Why not a controller that moves the weight during
training: measured on the fast model (ReLU 16x, target 32), one that multiplied the weight by
((L0 + 1) / 33) ** gain per step overshot while L0 was still falling from its initial ~700 (L0 9.5
by epoch 3), and the latents it silenced stayed dead: 61-87% dead, EV 0.18-0.78 at L0 ~30, with or
without resampling. A fixed weight is also the objective the literature's SAEs are trained on.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from husai.timing import stage

COLLAPSED_EV = 0.05
"""A weight whose SAE explains less than this share of the variance has collapsed
(measured: ReLU 512 latents on the fast model's resid_post at weight 32 had L0 8.1 and EV 0.00, its
decoder rows shrunk to nothing): its L0 says nothing about sparsity, so the search ignores it."""
FACTORS = (1 / 16, 1 / 4, 1.0, 4.0, 16.0)
"""Weights tried in one pass, relative to the pass's start: 256x in one pass, because the weight a
target needs moved ~100x across the default study's cells (ReLU, resid_post 128 latents L0 32: 0.36;
512 latents L0 32: 4.5; mlp.hook_post 128 latents L0 32: 0.013), and every extra pass costs as much
as training the cell. Interpolating between points 4x apart instead of 2x moved the weight by ~10%
(0.32 vs 0.36 on the first case: L0 ~35 instead of 32)."""
ROUNDS = 3
"""Passes at most; when the target lies outside the weights tried, the next pass's grid starts at
the largest (L0 still too high) or ends at the smallest (too low)."""


def calibrate_weight(
    acts: torch.Tensor, cfg, seed: int, device: str = "cpu"
) -> tuple[float, list[dict], bool]:
    """-> (the weight for cfg.target_l0, the table of every weight tried {weight, l0, ev}, whether
    the target was bracketed by two weights that did not collapse; if not, the healthy weight with
    the nearest L0 is returned: e.g. when every weight large enough for the target collapses)."""
    from husai.sae.metrics import reconstruction_metrics
    from husai.sae.train import train_saes

    target, start = cfg.target_l0, getattr(cfg, cfg.family.sparsity_key)
    plain = replace(cfg, target_l0=None, trajectory_epochs=[])
    table: list[dict] = []
    with stage("l0_search"):
        for _ in range(ROUNDS):
            weights = [start * f for f in FACTORS]
            res = train_saes(acts, plain, [seed] * len(weights), device, knobs=weights)
            m = reconstruction_metrics(res.sae, acts.to(device))
            table += [
                dict(weight=w, l0=l0, ev=ev)
                for w, l0, ev in zip(weights, m["l0"], m["explained_variance"])
            ]
            weight, start = next_step(table, target)
            if weight is not None:
                return weight, sorted(table, key=lambda r: r["weight"]), True
            if start is None:
                break
    healthy = [r for r in table if _healthy(r)]
    best = min(healthy or table, key=lambda r: abs(_log(r["l0"]) - math.log(target)))
    return best["weight"], sorted(table, key=lambda r: r["weight"]), False


def _healthy(r: dict) -> bool:
    return r["ev"] is not None and r["ev"] >= COLLAPSED_EV


def next_step(table: list[dict], target: float) -> tuple[float | None, float | None]:
    """From the weights tried so far -> (the interpolated weight, None) when two healthy neighbours
    bracket the target; else (None, the next pass's starting weight), or (None, None) when no pass
    can help: every weight large enough to reach the target collapses."""
    rows = sorted(table, key=lambda r: r["weight"])
    healthy = [r for r in rows if _healthy(r)]
    for lo, hi in zip(healthy, healthy[1:]):  # lo's weight < hi's: L0 falls from lo to hi
        if lo["l0"] >= target >= hi["l0"]:
            return _interpolate(lo, hi, target), None
    if healthy and all(r["l0"] > target for r in healthy):
        if healthy[-1] is not rows[-1]:
            return None, None  # the larger weights collapsed before L0 came down to the target
        return None, rows[-1]["weight"] / min(FACTORS)  # the next grid starts at the largest weight
    return None, rows[0]["weight"] / max(
        FACTORS
    )  # L0 already below the target (or all collapsed): smaller


def _log(l0: float) -> float:
    return math.log(max(l0, 1e-3))  # an SAE with every latent silent has L0 0


def _interpolate(lo: dict, hi: dict, target: float) -> float:
    """log weight linear in log L0 between two measured points."""
    span = _log(lo["l0"]) - _log(hi["l0"])
    t = 0.0 if span <= 0 else (_log(lo["l0"]) - math.log(target)) / span
    return math.exp(math.log(lo["weight"]) + t * (math.log(hi["weight"]) - math.log(lo["weight"])))
