"""Planted activations for the ground-truth tests: a hook whose structure is known by
construction."""

from __future__ import annotations

import math

import torch

from husai.analysis.ground_truth import ground_truth

P, KEYS, D = 13, [2, 3, 5], 24


def grid_values(p: int = P, operation: str = "add"):
    """a, b and the answer over husai's rows a*p + b."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    c = {"add": a + b, "sub": a - b, "mul": a * b}[operation] % p
    return a, b, c


def wave(index: torch.Tensor, k: int, phase: float = 0.0, n: int = P) -> torch.Tensor:
    """cos(2 pi k index / n + phase) over the grid."""
    return torch.cos(2 * math.pi * k * index.double() / n + phase)


def planted_hook():
    """(X [P*P, D], dirs [12, D], its GroundTruth): three output planes (amplitude 3) and three
    input planes (a and b on the same two directions) of KEYS on orthogonal directions, as in a
    grokked model's resid_post (docs/methods.md, "blocks.0.hook_resid_post"). dirs[4m : 4m+2] is
    output plane KEYS[m], dirs[4m+2 : 4m+4] its input plane."""
    a, b, c = grid_values()
    Q, _ = torch.linalg.qr(
        torch.randn(D, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    )
    dirs = Q.T
    X = torch.zeros(P * P, D, dtype=torch.float64)
    for m, k in enumerate(KEYS):
        X += 3 * (
            wave(c, k)[:, None] * dirs[4 * m] + wave(c, k, -math.pi / 2)[:, None] * dirs[4 * m + 1]
        )
        for i in (a, b):
            X += (
                wave(i, k)[:, None] * dirs[4 * m + 2]
                + wave(i, k, -math.pi / 2)[:, None] * dirs[4 * m + 3]
            )
    return X, dirs, ground_truth(X, P, "add", KEYS)
