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

from husai.analysis.ground_truth import GroundTruth, Plane, orthonormal_basis
from husai.analysis.latent_types import IN_PLANE
from husai.errors import HusaiError

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


def plane_scores(D: torch.Tensor, planes: list[Plane]) -> dict:
    """Per plane: coverage and mass of unit rows D [m, d] (module docstring)."""
    out = {}
    for pl in planes:
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


def recovery(W_dec: torch.Tensor, live: torch.Tensor, span: torch.Tensor, atom_sets: dict[str, torch.Tensor],
             planes: list[Plane], threshold: float = MATCH_THRESHOLD, draws: int = REFERENCE_DRAWS) -> dict:
    """Recovery of ground-truth atoms ({name: [n, d]}) and planes by an SAE's live decoder rows
    (W_dec [d_sae, d], live [d_sae] bool), all compared inside `span` [d, r] (orthonormal), with the
    random reference: `draws` dictionaries of as many isotropic unit directions inside the span."""
    D = _unit(W_dec[live].double() @ span @ span.T)  # in the data's span: what the data can see of each row
    result = dict(threshold=threshold, n_live=int(live.sum()), span_dim=int(span.shape[1]), atoms={}, planes={})
    refs = [_random_in_span(len(D), span, seed) for seed in range(draws)]
    for name, atoms in atom_sets.items():
        atoms = _unit(atoms.double() @ span @ span.T)
        scores = atom_scores(D, atoms, threshold)
        ref = [atom_scores(R, atoms, threshold) for R in refs]
        scores["random_reference"] = {k: float(np.mean([r[k] for r in ref])) for k in scores}
        scores["n_atoms"] = int(atoms.shape[0])
        result["atoms"][name] = scores
    scored, ref_planes = plane_scores(D, planes), [plane_scores(R, planes) for R in refs]
    for name, entry in scored.items():
        entry["random_reference"] = {k: float(np.mean([r[name][k] for r in ref_planes])) for k in ("coverage", "mass")}
    result["planes"] = scored
    return result


def hook_recovery(W_dec: torch.Tensor, live: torch.Tensor, gt: GroundTruth, neuron_atoms: torch.Tensor | None = None,
                  threshold: float = MATCH_THRESHOLD, draws: int = REFERENCE_DRAWS) -> dict:
    """`recovery` against a model hook's ground truth: the answer-class centroids (and neuron_atoms
    [n, d], the single-frequency neurons at an mlp.hook_post) and the key frequencies' planes,
    inside the planes' span."""
    atom_sets = {"answer_centroids": gt.centroids}
    if neuron_atoms is not None and len(neuron_atoms):
        atom_sets["neurons"] = neuron_atoms
    return recovery(W_dec, live, gt.span, atom_sets, gt.planes, threshold, draws)


SPAN_VARIANCE = 0.999
"""Without a model, the data span is the principal subspace holding 99.9% of the activation variance."""


def file_ground_truth(acts: torch.Tensor, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, list[Plane]]:
    """A user's own ground truth for activations acts [N, d]: a safetensors file's `atoms` [n, d]
    and any `plane.NAME` [m, d] (rows spanning the plane). -> (span [d, r], atom sets, planes)."""
    d = acts.shape[1]
    bad = [k for k in tensors if k != "atoms" and not k.startswith("plane.")]
    if bad or not tensors:
        raise HusaiError(f"a ground-truth file holds `atoms` [n, {d}] and/or `plane.NAME` [m, {d}] tensors"
                         + (f", not {bad[0]!r}" if bad else ", and this one holds none"))
    for k, t in tensors.items():
        if t.ndim != 2 or t.shape[1] != d or t.shape[0] == 0 or not torch.isfinite(t).all():
            raise HusaiError(f"ground-truth tensor {k!r} must be a finite [n, {d}] matrix, got {list(t.shape)}")
    X = acts.double() - acts.double().mean(0)
    _, s, Vh = torch.linalg.svd(X, full_matrices=False)
    energy = s.pow(2).cumsum(0) / s.pow(2).sum()
    span = Vh[: int((energy < SPAN_VARIANCE).sum()) + 1].T
    total = float(X.pow(2).sum())
    planes = []
    for k, rows in tensors.items():
        if k.startswith("plane."):
            basis = orthonormal_basis(rows.double())
            planes.append(Plane(k.removeprefix("plane."), rows.double(), basis, float((X @ basis).pow(2).sum()) / total))
    atoms = {"atoms": tensors["atoms"].double()} if "atoms" in tensors else {}
    return span, atoms, planes
