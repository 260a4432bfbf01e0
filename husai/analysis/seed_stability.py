"""The cross-seed stability of a set of SAEs, as `husai compare` and every study cell report it:
husai.analysis.agreement's levels in the data metric, plus the references that say whether the
agreement was learned or inherited.

JSON (`stability` in the compare output):
  data_span {dim, share}; off_span {label: mean share of live decoder rows' squared norm outside the
  span, a training-health figure}; threshold;
  levels {metric: {value, ci, std, n_pairs, matrix, nulls {kind: {value, ci, effect, effect_ci}},
    fitting {nulls, value, effect, effect_ci}}}   (atoms, activations; husai.analysis.agreement)
  ground_truth {plane_coverage_agreement, mass_agreement, class_jaccard, per_seed, planes}
    (model hooks)
  per_latent {label: {index, reappearance, best_cos, best_corr}}
  references {shared_init: {metric: summary}, trajectory: {epoch: {metric: summary}}}: the same atom
    comparison between the seeds' initialisations ("shared-init reference": with data init the
    seeds start from data points of the same p tight clusters, so it is high, and it is not chance)
    and between their checkpoints along training (OUT/trajectory.safetensors, when recorded)
  raw {pw_mcc_dec, mean_max_abs_cos_dec}: the old raw-coordinate decoder figures over all latents,
    kept to show what the data metric changes; they depend on the activations' basis.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from husai.analysis.agreement import (
    SeedView,
    ground_truth_agreement,
    reference_agreement,
    seed_agreement,
    seed_view,
    summarise,
)
from husai.analysis.data_span import data_span
from husai.analysis.stability import (
    SHARED_THRESHOLD,
    cosine_matrix,
    mean_max_abs_cos_from_cos,
    pw_mcc_from_cos,
)

TRAJECTORY = "trajectory.safetensors"


class SeedSlot:
    """Seed slot s of trained StackedSAEs (husai.sae.train.train_saes), with what `sae_stability`
    reads of an SAE loaded from disk: W_dec [d_sae, d_in], W_enc [d_in, d_sae], encode(x)
    [N, d_sae]."""

    def __init__(self, sae, s: int):
        self.W_dec = sae.W_dec.detach()[s]
        self.W_enc = sae.W_enc.detach()[s]
        self.b_dec = sae.b_dec.detach()[s]
        self._sae, self._s = sae, s

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._sae.encode(x)[self._s]


def trajectory_of(sae_dir: Path, seed) -> dict[int, dict]:
    """{epoch: {"W_dec", "W_enc_T", "live"}} for one seed from the train-sae output's trajectory
    file (OUT/trajectory.safetensors beside OUT/seed_*/, or in a one-seed OUT), or {} when not
    recorded."""
    from husai.errors import HusaiError
    from husai.io import load_tensors

    for path in (sae_dir / TRAJECTORY, sae_dir.parent / TRAJECTORY):
        if not path.is_file():
            continue
        try:
            tensors, meta = load_tensors(path, "SAE training trajectory")
            seeds = json.loads(meta.get("seeds", "[]"))
        except (HusaiError, ValueError):
            return {}
        if seed not in seeds:
            continue
        s = seeds.index(seed)
        out: dict[int, dict] = {}
        for key, t in tensors.items():
            name, _, epoch = key.partition(".epoch")
            if epoch.isdigit() and name in ("W_dec", "W_enc_T", "live"):
                out.setdefault(int(epoch), {})[name] = t[s]
        return {e: d for e, d in out.items() if {"W_dec", "W_enc_T", "live"} <= set(d)}
    return {}


def _raw(saes) -> dict:
    N = len(saes)
    mats = {m: np.eye(N) for m in ("pw_mcc_dec", "mean_max_abs_cos_dec")}
    for i in range(N):
        for j in range(i + 1, N):
            C = cosine_matrix(saes[i].W_dec.double(), saes[j].W_dec.double())
            mats["pw_mcc_dec"][i, j] = mats["pw_mcc_dec"][j, i] = pw_mcc_from_cos(C)
            mats["mean_max_abs_cos_dec"][i, j] = mats["mean_max_abs_cos_dec"][j, i] = (
                mean_max_abs_cos_from_cos(C)
            )
    return {m: summarise(M, {}) for m, M in mats.items()}


def sae_stability(
    saes: list,
    labels: list[str],
    acts: torch.Tensor,
    dirs: list[Path] | None = None,
    seeds: list | None = None,
    init_fn=None,
    grid_p: int | None = None,
    gt=None,
    operation: str = "add",
    threshold: float = SHARED_THRESHOLD,
) -> dict:
    """Everything of the module docstring for N >= 2 SAEs on activations acts [N_inputs, d_in].

    dirs, seeds: where each SAE was loaded from and its seed (for the trajectory file); init_fn
    (husai.analysis.compare.init_fn_for): rebuilds each seed's initialisation for the shared-init
    reference when no trajectory was recorded; grid_p: acts are the p^2 grid in row order a * p + b
    (enables the symmetry null); gt: the hook's ground truth (enables the ground-truth level)."""
    span = data_span(acts)
    x = acts.float()
    views: list[SeedView] = []
    for lab, sae in zip(labels, saes):
        with torch.no_grad():
            z = sae.encode(x)
        views.append(seed_view(lab, sae.W_dec, sae.W_enc.T, span, z))
    grid = (span.data_coords(acts), grid_p) if grid_p else None
    out = dict(
        data_span=dict(dim=int(span.basis.shape[1]), share=span.share),
        threshold=threshold,
        off_span={
            v.label: float(span.off_span(sae.W_dec[v.live]).mean()) if v.n else None
            for v, sae in zip(views, saes)
        },
    )
    out.update(seed_agreement(views, threshold, grid))
    if gt is not None:
        out["ground_truth"] = ground_truth_agreement(
            [sae.W_dec.double()[v.live] for v, sae in zip(views, saes)],
            gt,
            threshold,
            operation=operation,
        )
    for v in views:
        v.codes, v._sparse = (
            None,
            None,
        )  # [N_inputs, n_live] per seed and its sparse copy: freed before the references
    out["references"] = _references(saes, labels, span, dirs, seeds, init_fn, threshold)
    out["raw"] = _raw(saes)
    return out


def _references(saes, labels, span, dirs, seeds, init_fn, threshold) -> dict:
    trajs = [trajectory_of(d, s) for d, s in zip(dirs, seeds)] if dirs and seeds else []
    refs: dict = {}
    epochs = sorted(set.intersection(*(set(t) for t in trajs))) if trajs and all(trajs) else []
    if 0 not in epochs and init_fn is not None and seeds and all(isinstance(s, int) for s in seeds):
        d_in = saes[0].W_dec.shape[1]
        inits = [init_fn(d_in, sae.W_dec.shape[0], s) for sae, s in zip(saes, seeds)]
        refs["shared_init"] = reference_agreement(
            [seed_view(lab, W_dec, W_enc.T, span) for lab, (W_enc, W_dec) in zip(labels, inits)],
            threshold,
        )
    if epochs:
        refs["trajectory"] = {}
        for e in epochs:
            views = [
                seed_view(lab, t[e]["W_dec"], t[e]["W_enc_T"], span, live=t[e]["live"].bool())
                for lab, t in zip(labels, trajs)
            ]
            refs["trajectory"][e] = reference_agreement(views, threshold)
        if 0 in refs["trajectory"]:
            refs["shared_init"] = refs["trajectory"][0]
    return refs
