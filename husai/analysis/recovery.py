"""How much of a hook's ground truth an SAE recovers, one number per level, each next to references
that learned nothing (husai.analysis.ground_truth).

Discrete atoms (the p answer-class centroids; at mlp.hook_post also the single-frequency neurons):
decoder rows and atoms are compared inside a span (the key-frequency planes' span for a model hook,
the 99.9%-variance principal subspace for a user's activations: an SAE's off-span directions are
invisible to the data and differ per seed; docs/methods.md, "The data metric"), as unit vectors, by
signed cosine (codes are non-negative, so a row pointing at -atom is another feature):

    mcc        Hungarian-matched cosine averaged over the atoms (a latent serves one atom at most)
    recall     fraction of atoms with some latent at cosine >= threshold
    precision  fraction of live latents at cosine >= threshold to some atom
    f1         their harmonic mean (SynthSAEBench scores synthetic ground truth the same way)

Planes (each key frequency's output and input plane):

    latents    how many decoder rows lie mostly (> IN_PLANE) in the plane
    coverage   mean squared principal cosine between the plane and the top-dim(plane) singular
               subspace of those rows: 1 when they fill the plane, 1/2 when they all lie on one line
    mass       the share of the dictionary's (unit, in-span) decoder rows that lies in the plane,
               next to the plane's share of the activation variance

References, each with as many rows as the SAE has live latents, drawn REFERENCE_DRAWS times:
"random" (isotropic unit directions in the span) and "data points" (random centred data points,
what a data-initialised SAE starts from: it matches the answer centroids well because the
activations are p tight clusters (docs/methods.md, "Recovery"), so it is the bar that learning must
clear).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from husai.analysis.data_span import SPAN_VARIANCE, data_span
from husai.analysis.ground_truth import GroundTruth, Plane, orthonormal_basis
from husai.analysis.latent_types import IN_PLANE
from husai.analysis.stability import unit
from husai.errors import HusaiError

MATCH_THRESHOLD = 0.7
"""An atom counts as found at |cos| >= 0.7 (the Paulo & Belrose shared-feature threshold husai's
stability metrics use)."""
REFERENCE_DRAWS = 5


def atom_scores(D: torch.Tensor, atoms: torch.Tensor, threshold: float = MATCH_THRESHOLD) -> dict:
    """mcc, precision, recall, f1 of unit rows D [m, d] against unit atoms [n, d] (module
    docstring)."""
    if len(D) == 0 or len(atoms) == 0:
        return dict(mcc=None, precision=None, recall=None, f1=None)
    C = D @ atoms.T  # [m, n], signed
    rows, cols = linear_sum_assignment(C.numpy(), maximize=True)
    mcc = float(C[rows, cols].sum()) / atoms.shape[0]
    recall = float((C.max(dim=0).values >= threshold).double().mean())
    precision = float((C.max(dim=1).values >= threshold).double().mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return dict(mcc=mcc, precision=precision, recall=recall, f1=f1)


def _random_in_span(m: int, span: torch.Tensor, seed: int) -> torch.Tensor:
    """m isotropic unit directions inside the span [d, r] -> [m, d]."""
    g = torch.Generator().manual_seed(seed)
    return unit(torch.randn(m, span.shape[1], generator=g, dtype=torch.float64) @ span.T)


def plane_scores(D: torch.Tensor, planes: list[Plane]) -> dict:
    """Per plane: coverage and mass of unit rows D [m, d] (module docstring)."""
    out = {}
    for pl in planes:
        frac = (D @ pl.basis).pow(2).sum(1) if len(D) else D.new_zeros(0)  # [m]
        assigned, r = D[frac > IN_PLANE], pl.basis.shape[1]
        if len(assigned) and r:
            Q = torch.linalg.svd(assigned.T, full_matrices=False)[0][
                :, :r
            ]  # the rows' own top-r directions
            coverage = float(torch.linalg.svdvals(pl.basis.T @ Q).pow(2).sum()) / r
        else:
            coverage = 0.0
        out[pl.name] = dict(
            dim=int(pl.basis.shape[1]),
            variance_share=pl.share,
            latents=int(len(assigned)),
            coverage=coverage,
            mass=float(frac.mean()) if len(frac) else None,
        )
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def recovery(
    W_dec: torch.Tensor,
    live: torch.Tensor,
    span: torch.Tensor,
    atom_sets: dict[str, torch.Tensor],
    planes: list[Plane],
    data: torch.Tensor | None = None,
    threshold: float = MATCH_THRESHOLD,
    draws: int = REFERENCE_DRAWS,
) -> dict:
    """Recovery of ground-truth atoms ({name: [n, d]}) and planes by an SAE's live decoder rows
    (W_dec [d_sae, d], live [d_sae] bool), all compared inside `span` [d, r] (orthonormal), with the
    references of the module docstring (the data-point one needs the activations, data [N, d])."""
    D = unit(W_dec[live].double() @ span @ span.T)  # in the span: what the data can see of each row
    result = dict(
        threshold=threshold,
        n_live=int(live.sum()),
        span_dim=int(span.shape[1]),
        atoms={},
        planes={},
    )
    refs = {"random_reference": [_random_in_span(len(D), span, seed) for seed in range(draws)]}
    if data is not None:
        X = data.double() - data.double().mean(0)
        picks = [
            torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[: len(D)]
            for seed in range(draws)
        ]
        refs["data_point_reference"] = [unit(X[i] @ span @ span.T) for i in picks]
    for name, atoms in atom_sets.items():
        atoms = unit(atoms.double() @ span @ span.T)
        scores = atom_scores(D, atoms, threshold)
        for ref_name, dicts in refs.items():
            ref = [atom_scores(R, atoms, threshold) for R in dicts]
            scores[ref_name] = {
                k: _mean([r[k] for r in ref]) for k in ("mcc", "precision", "recall", "f1")
            }
        scores["n_atoms"] = int(atoms.shape[0])
        result["atoms"][name] = scores
    scored = plane_scores(D, planes)
    for ref_name, dicts in refs.items():
        ref_planes = [plane_scores(R, planes) for R in dicts]
        for name, entry in scored.items():
            entry[ref_name] = {
                k: _mean([r[name][k] for r in ref_planes]) for k in ("latents", "coverage", "mass")
            }
    result["planes"] = scored
    return result


def hook_recovery(
    W_dec: torch.Tensor,
    live: torch.Tensor,
    gt: GroundTruth,
    neuron_atoms: torch.Tensor | None = None,
    data: torch.Tensor | None = None,
    threshold: float = MATCH_THRESHOLD,
    draws: int = REFERENCE_DRAWS,
) -> dict:
    """`recovery` against a model hook's ground truth: the answer-class centroids (and neuron_atoms
    [n, d], the single-frequency neurons at an mlp.hook_post) and the key frequencies' planes,
    inside the planes' span."""
    atom_sets = {"answer_centroids": gt.centroids}
    if neuron_atoms is not None and len(neuron_atoms):
        atom_sets["neurons"] = neuron_atoms
    return recovery(W_dec, live, gt.span, atom_sets, gt.planes, data, threshold, draws)


def file_ground_truth(
    acts: torch.Tensor, tensors: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict, list[Plane]]:
    """A user's own ground truth for activations acts [N, d]: a safetensors file's `atoms` [n, d]
    and any `plane.NAME` [m, d] (rows spanning the plane). -> (span [d, r], atom sets, planes)."""
    d = acts.shape[1]
    bad = [k for k in tensors if k != "atoms" and not k.startswith("plane.")]
    if bad or not tensors:
        raise HusaiError(
            f"a ground-truth file holds `atoms` [n, {d}] and/or `plane.NAME` [m, {d}] tensors"
            + (f", not {bad[0]!r}" if bad else ", and this one holds none")
        )
    for k, t in tensors.items():
        if t.ndim != 2 or t.shape[1] != d or t.shape[0] == 0 or not torch.isfinite(t).all():
            raise HusaiError(
                f"ground-truth tensor {k!r} must be a finite [n, {d}] matrix, got {list(t.shape)}"
            )
    X = acts.double() - acts.double().mean(0)
    try:
        span = data_span(acts, SPAN_VARIANCE).basis
    except ValueError:
        raise HusaiError("the activations are constant: they carry no information") from None
    total = float(X.pow(2).sum())
    planes = []
    for k, rows in tensors.items():
        if k.startswith("plane."):
            basis = orthonormal_basis(rows.double())
            planes.append(
                Plane(
                    k.removeprefix("plane."),
                    rows.double(),
                    basis,
                    float((X @ basis).pow(2).sum()) / total,
                )
            )
    atoms = {"atoms": tensors["atoms"].double()} if "atoms" in tensors else {}
    return span, atoms, planes
