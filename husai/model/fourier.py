"""The Fourier ground truth of a grokked modular-addition model (Nanda et al. 2023, section 4).

Fourier basis of Z_p (as in Nanda et al. 2023): an orthonormal p x p matrix F whose row 0 is
ones/sqrt(p) and whose rows 2k-1, 2k are cos(2 pi k x / p), sin(2 pi k x / p), normalised, for
k = 1..(p-1)/2. A function t over Z_p has 1-D coefficients `t @ F.T`; a function over the (a, b)
grid has 2-D coefficients einsum('xyn,fx,Fy->fFn', act, F, F).

A neuron (or SAE latent) "has frequency k" when the 3x3 block {const, cos_k, sin_k}^2 of its
centred 2-D spectrum explains most of its variance; Nanda et al. count neurons with >= 85%.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F_

PURITY_THRESHOLD = 0.85
"""A neuron/latent is single-frequency when one 3x3 frequency block explains >= 85% of its
centred variance (Nanda et al. 2023, section 4.2: 433/512 neurons pass this bar)."""

KEY_FREQ_SHARE = 0.05
"""A frequency is "key" when its 3x3 blocks carry >= 5% of the MLP's total centred variance.
A grokked model spreads its neurons over 3-7 frequencies (>= 10% each), while each of the ~50
non-key frequencies holds well under 1%, so 5% separates the two with a wide margin."""


def fourier_basis(p: int, dtype=torch.float64) -> tuple[torch.Tensor, list[str]]:
    """Orthonormal Fourier basis of Z_p.
    Returns (F [p, p], names ['const', 'cos 1', 'sin 1', ...])."""
    x = torch.arange(p, dtype=dtype)
    rows, names = [torch.ones(p, dtype=dtype)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    F = torch.stack(rows)
    return F / F.norm(dim=1, keepdim=True), names


def get_fourier_basis(modulus: int) -> torch.Tensor:
    """The p x p orthonormal Fourier basis of Z_modulus (rows: const, cos 1, sin 1, cos 2, ...)."""
    return fourier_basis(modulus)[0]


def fourier_2d(acts: torch.Tensor, p: int) -> torch.Tensor:
    """2-D Fourier coefficients over the (a, b) grid. acts: [p*p, n] (row a*p+b) -> [p, p, n]."""
    F, _ = fourier_basis(p, dtype=torch.float64)
    F = F.to(acts.device)
    return torch.einsum("xyn,fx,Fy->fFn", acts.to(torch.float64).reshape(p, p, -1), F, F)


def frequency_fractions(acts: torch.Tensor, p: int) -> torch.Tensor:
    """Fraction of each column's centred variance in each frequency's 3x3 block.

    acts: [p*p, n] activations over the full grid -> [n, (p-1)/2]; column k-1 is frequency k.
    The block {const, cos_k, sin_k}^2 minus (const, const) covers every function of (a, b) built
    from frequency k alone: cos(w a), sin(w b), cos(w (a+b)), cos(w a) cos(w b), ...
    Columns with zero variance (dead neurons) get all-zero fractions.
    """
    c = fourier_2d(acts, p).pow(2)  # [p, p, n]
    c[0, 0] = 0  # centring removes exactly the (const, const) coefficient
    total = c.sum(dim=(0, 1))  # [n]
    K = (p - 1) // 2
    out = torch.empty(K, c.shape[2], dtype=torch.float64, device=acts.device)
    for k in range(1, K + 1):
        idx = torch.tensor([0, 2 * k - 1, 2 * k], device=acts.device)
        out[k - 1] = c[idx][:, idx].sum(dim=(0, 1))
    return (out / total.clamp_min(1e-30)).T * (total > 1e-20).unsqueeze(1)


def key_frequencies(
    neuron_acts: torch.Tensor, p: int, share: float = KEY_FREQ_SHARE
) -> tuple[list[int], list[float]]:
    """Key frequencies of a model from its MLP neurons. neuron_acts: [p*p, d_mlp].

    Returns (sorted key frequencies, share of total centred MLP variance per frequency 1..(p-1)/2).
    """
    c = fourier_2d(neuron_acts, p).pow(2).sum(dim=2)  # [p, p]: summed over neurons
    c[0, 0] = 0
    total = c.sum()
    shares = []
    for k in range(1, (p - 1) // 2 + 1):
        idx = torch.tensor([0, 2 * k - 1, 2 * k])
        shares.append(float(c[idx][:, idx].sum() / total) if total > 0 else 0.0)
    return [k for k, s in enumerate(shares, start=1) if s >= share], shares


def embed_spectrum(W_E: torch.Tensor, p: int) -> list[float]:
    """Norm of W_E (number tokens only) along each frequency: sqrt(|cos_k W_E|^2 + |sin_k W_E|^2).

    W_E: [d_vocab, d_model] -> list of (p-1)/2 norms, frequency 1 first.
    """
    F, _ = fourier_basis(p)
    coeffs = F @ W_E[:p].to(torch.float64).cpu()  # [p, d_model]
    n = coeffs.norm(dim=1)
    return [float(math.hypot(n[2 * k - 1], n[2 * k])) for k in range(1, (p - 1) // 2 + 1)]


def _sum_dirs(p: int, freqs: list[int], sign: int) -> torch.Tensor:
    """Unit vectors cos(w_k (a + sign*b)), sin(w_k (a + sign*b)) over the grid.
    -> [p*p, 2*len(freqs)]."""
    a = torch.arange(p, dtype=torch.float64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.float64).repeat(p)
    cols = []
    for k in freqs:
        w = 2 * math.pi * k / p
        cols += [torch.cos(w * (a + sign * b)), torch.sin(w * (a + sign * b))]
    if not cols:
        return torch.zeros(p * p, 0, dtype=torch.float64)
    D = torch.stack(cols, dim=1)
    return D / D.norm(dim=0, keepdim=True)


def restricted_excluded_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    train_idx: torch.Tensor,
    p: int,
    freqs: list[int],
    operation: str = "add",
) -> tuple[float, float]:
    """Nanda et al.'s progress measures (section 5.1), computed in logit space.

    logits: [p*p, p] over the full grid. For each output c the logits, as a function of (a, b),
    are projected on the directions cos(w_k (a+b)), sin(w_k (a+b)) of the key frequencies.
      restricted loss: CE over all p^2 inputs of (per-c mean + key-frequency components);
                       low once the Fourier algorithm alone solves the task.
      excluded loss:   CE over the training inputs of (logits - key-frequency components);
                       rises as the model stops relying on memorisation.
    Returns (restricted_loss, excluded_loss), float64 cross-entropy. NaN for multiplication,
    whose circuit is not a sum of these directions.
    """
    if operation not in ("add", "sub"):
        return float("nan"), float("nan")
    L = logits.to(torch.float64)
    D = _sum_dirs(p, freqs, 1 if operation == "add" else -1).to(L.device)
    comp = D @ (D.T @ L)  # [p*p, p]
    restricted = L.mean(dim=0, keepdim=True) + comp
    excluded = L - comp
    r = F_.cross_entropy(restricted, labels.to(L.device))
    e = F_.cross_entropy(excluded[train_idx], labels[train_idx].to(L.device))
    return float(r), float(e)
