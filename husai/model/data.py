"""The modular-arithmetic data set: every pair (a, b) in Z_p x Z_p, tokens [a, b, =].

The input is exactly three tokens, the third being `=` (token id p); the label c = (a op b) mod p
is read from the logits at the `=` position. The answer is never an input token: public work that
fed `[a, +, b, =, c]` and read the loss at c's own position trained a model that merely copies
the answer and has no Fourier structure (Nanda et al. 2023 feed `[a, b, =]`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from husai.errors import HusaiError

OPERATIONS = ("add", "sub", "mul")


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def check_modulus(p: int) -> None:
    if not isinstance(p, int) or p < 3 or not is_prime(p):
        raise HusaiError(
            f"p must be a prime >= 3 (the Fourier analysis needs a field Z_p), got {p}"
        )


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


def check_seed(seed, name: str = "seed") -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not SEED_MIN <= seed <= SEED_MAX:
        raise HusaiError(f"{name} must be an integer in [-2^63, 2^64 - 1], got {seed!r}")


def all_pairs(p: int) -> torch.Tensor:
    """All p^2 pairs in row-major order: row a*p + b holds (a, b). Shape [p*p, 2], int64."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return torch.stack([a, b], dim=1)


def make_tokens(p: int) -> torch.Tensor:
    """Input tokens [a, b, =] for all p^2 pairs, `=` being token id p. Shape [p*p, 3], int64."""
    check_modulus(p)
    pairs = all_pairs(p)
    eq = torch.full((p * p, 1), p, dtype=torch.long)
    return torch.cat([pairs, eq], dim=1)


def make_labels(p: int, operation: str = "add") -> torch.Tensor:
    """c = (a op b) mod p for all p^2 pairs, same order as make_tokens. Shape [p*p], int64."""
    if operation not in OPERATIONS:
        raise HusaiError(f"unknown operation {operation!r}; choose one of {', '.join(OPERATIONS)}")
    pairs = all_pairs(p)
    a, b = pairs[:, 0], pairs[:, 1]
    if operation == "add":
        c = a + b
    elif operation == "sub":
        c = a - b
    else:
        c = a * b
    return c % p


@dataclass
class ModularData:
    """The full data set and its seeded split. Indices refer to rows of `tokens`."""

    p: int
    operation: str
    tokens: torch.Tensor  # [p*p, 3] int64: a, b, =
    labels: torch.Tensor  # [p*p] int64
    train_idx: torch.Tensor  # [n_train] int64
    test_idx: torch.Tensor  # [p*p - n_train] int64


def make_dataset(p: int, train_frac: float, seed: int, operation: str = "add") -> ModularData:
    """All p^2 examples and a random train/test split of them, seeded by `seed` alone.

    The permutation uses its own torch.Generator so the split never depends on (or disturbs)
    the global RNG that initialises the model.
    """
    if not 0.0 < train_frac < 1.0:
        raise HusaiError(f"train fraction must lie strictly between 0 and 1, got {train_frac}")
    tokens = make_tokens(p)
    labels = make_labels(p, operation)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(p * p, generator=gen)
    n_train = int(round(train_frac * p * p))
    if n_train < 1 or n_train >= p * p:
        raise HusaiError(
            f"train fraction {train_frac} leaves an empty train or test split for p={p}"
        )
    return ModularData(
        p, operation, tokens, labels, perm[:n_train].sort().values, perm[n_train:].sort().values
    )
