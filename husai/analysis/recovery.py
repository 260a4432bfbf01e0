"""How much of a hook's ground truth an SAE recovers, one number per level, each next to what a
random dictionary of the same size in the same span scores (husai.analysis.ground_truth).

Discrete atoms (the p answer-class centroids; at mlp.hook_post also the single-frequency neurons):
decoder rows and atoms are compared inside the span of the data (an SAE's off-span directions are
invisible to the data and differ per seed, science brief section 6), as unit vectors, by |cos|:

    mcc        Hungarian-matched |cos| averaged over the atoms (a latent serves one atom at most)
    recall     fraction of atoms with some latent at |cos| >= threshold
    precision  fraction of live latents at |cos| >= threshold to some atom
    f1         their harmonic mean (SynthSAEBench scores synthetic ground truth the same way)

Planes (each key frequency's output and input plane):

    coverage   how much of the plane the latents assigned to it span: mean squared principal cosine
               between the plane and the span of the decoder rows that lie mostly in it (IN_PLANE)
    mass       the share of the dictionary's (unit, in-span) decoder rows that lies in the plane, next
               to the plane's share of the activation variance (the off-span part of each row is
               reported as off_span by husai.analysis.latent_types)
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from husai.analysis.ground_truth import GroundTruth
from husai.analysis.latent_types import IN_PLANE

MATCH_THRESHOLD = 0.7
"""An atom counts as found at |cos| >= 0.7 (the Paulo & Belrose shared-feature threshold husai's
stability metrics use)."""
REFERENCE_DRAWS = 5


def _unit(M: torch.Tensor) -> torch.Tensor:
    return M / M.norm(dim=1, keepdim=True).clamp_min(1e-30)


def atom_scores(D: torch.Tensor, atoms: torch.Tensor, threshold: float = MATCH_THRESHOLD) -> dict:
    """mcc, precision, recall, f1 of unit rows D [m, d] against unit atoms [n, d] (module docstring)."""
    C = (D @ atoms.T).abs()  # [m, n]
    rows, cols = linear_sum_assignment(C.numpy(), maximize=True)
    mcc = float(C[rows, cols].sum()) / atoms.shape[0]
    recall = float((C.max(dim=0).values >= threshold).double().mean())
    precision = float((C.max(dim=1).values >= threshold).double().mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return dict(mcc=mcc, precision=precision, recall=recall, f1=f1)


def _random_in_span(m: int, span: torch.Tensor, seed: int) -> torch.Tensor:
    """m isotropic unit directions inside the span [d, r] -> [m, d]."""
    g = torch.Generator().manual_seed(seed)
    return _unit(torch.randn(m, span.shape[1], generator=g, dtype=torch.float64) @ span.T)


def plane_scores(D: torch.Tensor, gt: GroundTruth) -> dict:
    """Per plane: coverage and mass of unit rows D [m, d] (module docstring)."""
    out = {}
    for pl in gt.planes:
        frac = (D @ pl.basis).pow(2).sum(1)  # [m]
        assigned = D[frac > IN_PLANE]
        if len(assigned) and pl.basis.shape[1]:
            Q, s, _ = torch.linalg.svd(assigned.T, full_matrices=False)
            Q = Q[:, s >= 1e-6 * s[0]]
            coverage = float(torch.linalg.svdvals(pl.basis.T @ Q).pow(2).sum()) / pl.basis.shape[1]
        else:
            coverage = 0.0
        out[pl.name] = dict(dim=int(pl.basis.shape[1]), variance_share=pl.share, latents=int(len(assigned)),
                            coverage=coverage, mass=float(frac.mean()))
    return out


def recovery(W_dec: torch.Tensor, live: torch.Tensor, gt: GroundTruth, neuron_atoms: torch.Tensor | None = None,
             threshold: float = MATCH_THRESHOLD, draws: int = REFERENCE_DRAWS) -> dict:
    """Recovery of the ground truth by an SAE's live decoder rows (W_dec [d_sae, d], live [d_sae]
    bool), with the random reference: `draws` dictionaries of as many isotropic unit directions
    inside the planes' span. neuron_atoms [n, d]: extra discrete atoms (single-frequency neurons)."""
    D_raw = W_dec[live].double()
    span = gt.span
    D = _unit(D_raw @ span @ span.T)  # in the data's span: what the data can see of each row
    atom_sets = {"answer_centroids": _unit(gt.centroids @ span @ span.T)}
    if neuron_atoms is not None and len(neuron_atoms):
        atom_sets["neurons"] = _unit(neuron_atoms.double() @ span @ span.T)
    result = dict(threshold=threshold, n_live=int(live.sum()), span_dim=int(span.shape[1]), atoms={}, planes={})
    refs = [_random_in_span(len(D), span, seed) for seed in range(draws)]
    for name, atoms in atom_sets.items():
        scores = atom_scores(D, atoms, threshold)
        ref = [atom_scores(R, atoms, threshold) for R in refs]
        scores["random_reference"] = {k: float(np.mean([r[k] for r in ref])) for k in scores}
        scores["n_atoms"] = int(atoms.shape[0])
        result["atoms"][name] = scores
    planes, ref_planes = plane_scores(D, gt), [plane_scores(R, gt) for R in refs]
    for name, entry in planes.items():
        entry["random_reference"] = {k: float(np.mean([r[name][k] for r in ref_planes])) for k in ("coverage", "mass")}
    result["planes"] = planes
    return result
