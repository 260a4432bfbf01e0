"""What the feature browser shows beside a latent's activations: its direct effect on the answer
logits, the distribution of its non-zero activations, and the nearest atom of the oracle tiling
(husai.analysis.oracle) that the cell's oracle reading uses, with that tiling as a pseudo-SAE.

Logit effect. The model has no LayerNorm (husai.model.transformer: logits = resid_post W_U + b_U),
so a decoder row's direct effect on the logits is linear and exact: adding z W_dec[i] to the last
block's resid_post moves the logits by z W_dec[i] W_U; at blocks.L.mlp.hook_post the row is a
vector of neuron activations and its direct effect is W_dec[i] W_out W_U (W_out of block L).
"Direct" means the path through the residual stream straight to the unembedding, skipping any later
block (the 1-layer model has none, so it is the whole effect); b_U and b_out add the same to every
latent and are left out. Stored per latent as 8-bit signed levels of its largest |effect|
(`EFFECT_LEVELS`); its Fourier concentration is computed here from the full-precision effect: the
share of its centred variance in the best single frequency f of a DFT over c (the power at f and
-f together), and that f. An effect that is a cosine of one key frequency scores ~1.

Activation density. A histogram of the latent's non-zero activations in `DENSITY_BINS` log-spaced
bins from its smallest to its largest non-zero value (SAEDashboard's activation histogram, on a log
axis as its log-density plots), over all p^2 inputs, from the unquantised activations.

Nearest oracle atom. The cell's oracle is built as husai.analysis.optimisation_gap.cell_oracle
builds it: truth_circles of the hook's centred activations on the group grid at the ground truth's
key frequencies, and per seed `tiling(circles, d_sae, seed)` (the width rule, that seed's phases).
Each live latent gets the atom of its own seed's tiling with the largest cosine to its decoder row,
in the model's basis, as `near_truth` measures it (NEAR = 0.9 is the "near the truth" threshold).

The oracle as a pseudo-SAE: the first seed's tiling as decoder, and as activations the encoder the
oracle reading's "started at the truth" runs begin from for the L1 families (truth_start): atom j
fires ReLU(<x - mean, a_j> - r_j cos(2 pi / m)), r_j the curve's distance from the mean at its
phase, that is on the arc of phases its two neighbours bound. Its best code (best_code) would be the
scoring's own, but takes 1-80 s per cell (greedy pursuit at k = 32 over 12,769 inputs); this is
one matrix product.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

EFFECT_LEVELS = 127
"""A logit effect is stored as round(127 e / max |e|) + 128, one byte per class."""
DENSITY_BINS = 20
"""Log-spaced bins of a latent's activation histogram."""


def logit_map(model_dir: Path, hook: str) -> torch.Tensor:
    """[d_in, p] float64: the direct map from an activation at `hook` to the answer logits (module
    docstring): W_U at a resid_post (or resid_mid/resid_pre), W_out W_U at an mlp.hook_post."""
    from husai.errors import HusaiError
    from husai.model.checkpoint import load_model

    model, _ = load_model(model_dir)
    W_U = model.unembed.W_U.detach().double()
    parts = hook.split(".")
    if hook.endswith("mlp.hook_post") and len(parts) > 1 and parts[1].isdigit():
        return model.blocks[int(parts[1])].mlp.W_out.detach().double() @ W_U
    if "hook_resid" in hook:
        return W_U
    raise HusaiError(f"no direct logit effect is defined at hook {hook}")


def effect_stats(E: torch.Tensor) -> tuple[list[int], list[float]]:
    """E [n, p] effects -> (best single frequency f in 1..p//2, share of the centred variance at f
    and -f) per row (a constant row: f 0, share 0)."""
    E = E.double() - E.double().mean(1, keepdim=True)
    p = E.shape[1]
    power = torch.fft.rfft(E, dim=1).abs().pow(2)[:, 1:]  # f = 1..p//2
    power[:, : (p - 1) // 2] *= 2  # f and -f; for even p the Nyquist term is its own conjugate
    total = power.sum(1)
    best = power.argmax(1)
    share = power.gather(1, best[:, None]).squeeze(1) / total.clamp_min(1e-300)
    ok = total > 1e-24
    return (
        [int(f) + 1 if o else 0 for f, o in zip(best, ok)],
        [round(float(s), 4) if o else 0.0 for s, o in zip(share, ok)],
    )


def pack_effects(E: torch.Tensor) -> tuple[bytes, list[float]]:
    """E [n, p] -> (uint8 [n, p] bytes of round(127 e / max|e|) + 128, per-row max |e|)."""
    E = E.double()
    scale = E.abs().max(1).values if E.numel() else torch.zeros(0, dtype=torch.float64)
    q = torch.round(E / scale.clamp_min(1e-30)[:, None] * EFFECT_LEVELS) + 128
    raw = q.clamp(1, 255).to(torch.uint8).numpy().tobytes()
    return raw, [float(f"{s:.6g}") for s in scale.tolist()]


def density(z: np.ndarray) -> dict:
    """z [N, n] activations -> {lo, hi: log10 of each column's smallest / largest non-zero value,
    counts [n][DENSITY_BINS]} (module docstring; a column firing on one value puts it in bin 0)."""
    lo, hi, counts = [], [], []
    for col in np.asarray(z, dtype=np.float64).T:
        v = np.log10(col[col > 0])
        if v.size == 0:
            lo.append(None), hi.append(None), counts.append([0] * DENSITY_BINS)
            continue
        a, b = float(v.min()), float(v.max())
        h, _ = np.histogram(v, bins=DENSITY_BINS, range=(a, b if b > a else a + 1e-9))
        lo.append(round(a, 5)), hi.append(round(b, 5)), counts.append(h.tolist())
    return dict(lo=lo, hi=hi, counts=counts)


def kind_name(circle: str, operation: str) -> str:
    """An oracle circle's kind as the page names it: output, input, input a / b, or the conjugate
    index (a - b for add, a + b for sub)."""
    name = circle.split()[0]
    return {
        "out": "output",
        "in": "input",
        "in-a": "input a",
        "in-b": "input b",
        "conj": {"add": "(a-b)", "sub": "(a+b)"}.get(operation, "conjugate"),
    }.get(name, name)


def cell_oracle_tilings(ctx: dict, gt, seeds: list, d_sae: int) -> dict:
    """{seed: (unit atoms [m, d] float64, labels)} for the cell's seeds, as cell_oracle builds them
    (module docstring); {} when the width tiles no circle or the truth has none."""
    from husai.analysis.ground_truth import group_grid, on_grid
    from husai.analysis.oracle import tiling, truth_circles

    if "truth_circles" not in ctx:  # once per model and hook (the context is cached per model)
        grid = group_grid(ctx["p"], ctx.get("operation", "add"))
        ctx["truth_circles"] = truth_circles(on_grid(ctx["acts"], grid), grid, gt.key_frequencies)
    circles = ctx["truth_circles"]
    out = {}
    for s in seeds:
        try:
            out[s] = tiling(circles, d_sae, int(s))
        except (ValueError, TypeError):  # no circle, a width under 3 atoms, or no integer seed
            return {}
    return out


def nearest_atoms(W_dec: torch.Tensor, atoms: torch.Tensor, labels: list[dict], op: str) -> dict:
    """For the rows of W_dec [n, d]: the nearest atom of the tiling by cosine in the model's basis
    -> {atom: index, cos, circle, kind, freq, phase} lists (phase in degrees)."""
    W = W_dec.double()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)
    if W.shape[0] == 0:
        return dict(atom=[], cos=[], circle=[], kind=[], freq=[], phase=[])
    best, arg = (W @ atoms.double().T).max(1)
    lab = [labels[int(j)] for j in arg]
    return dict(
        atom=arg.tolist(),
        cos=[round(float(c), 4) for c in best],
        circle=[x["circle"] for x in lab],
        kind=[kind_name(x["circle"], op) for x in lab],
        freq=[int(x["circle"].split()[-1]) for x in lab],
        phase=[round(math.degrees(x["phase"]) % 360, 1) for x in lab],
    )


def oracle_code(acts: torch.Tensor, rows: torch.Tensor, atoms: torch.Tensor, labels: list[dict]):
    """The pseudo-SAE's activations [p*p, m] over all inputs (rows a*p + b): ReLU(<x - mean, a_j> -
    r_j cos(spacing_j)), the mean over the group grid's rows (module docstring)."""
    X = acts.double()
    X = X - X[rows].mean(0)
    thresh = torch.tensor([x["radius"] * math.cos(x["spacing"]) for x in labels], dtype=X.dtype)
    return torch.relu(X @ atoms.double().T - thresh)
