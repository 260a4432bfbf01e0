"""A study cell's oracle reading (husai.analysis.optimisation_gap) from what the cell wrote: its
SAEs' EV and L0 (metrics.json), the penalty weight its L0 search found, and the hook's
activations."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from husai.analysis.compare import hook_ground_truth, model_context
from husai.analysis.optimisation_gap import cell_oracle
from husai.io import read_json
from husai.sae.checkpoint import load_saes
from husai.sae.config import config_from_dict
from husai.timing import stage


def oracle_for_cell(folder: Path, spec: dict) -> dict:
    metrics = read_json(folder / "metrics.json", "SAE metrics")
    cfg = config_from_dict(spec["sae_cfg"])
    calibration = metrics.get("calibration")
    if calibration:  # train at the weight the cell's seeds trained at, not the search's start
        cfg = replace(cfg, **{cfg.family.sparsity_key: calibration["weight"]})
    if metrics.get("epochs_trained") and cfg.converge_ev is not None:
        # the oracle's trainings get the epochs the cell's own training took: the same budget, so
        # that they differ from it only in the start or the frozen decoder (and a started run
        # that never settles does not train to the cap)
        cfg = replace(cfg, epochs=int(metrics["epochs_trained"]), converge_ev=None)
    seeds = list(spec["seeds"])
    per = metrics["per_seed"]
    with stage("activations"):
        ctx = model_context(Path(spec["model_dir"]), spec["hook"])
    with stage("ground_truth"):
        # its key frequencies are the grid's own (discrete logarithms for mul)
        gt = hook_ground_truth(ctx)
    saes = load_saes(folder) if len(seeds) > 1 else None
    # everything but the extra trainings (their own stage inside) is the pursuit's scoring
    with stage("oracle_score"):
        return cell_oracle(
            ctx["acts"],
            ctx["p"],
            ctx.get("operation", "add"),
            gt.key_frequencies,
            cfg,
            seeds,
            int(metrics["d_sae"]),
            [per[str(s)]["explained_variance"] for s in seeds],
            [per[str(s)]["l0"] for s in seeds],
            saes,
            started=bool(spec["oracle"].get("started", True)),
            encoder=bool(spec["oracle"].get("encoder", True)),
            neurons=str(spec["hook"]).endswith("mlp.hook_post"),
            history=metrics.get("history"),
            converged=metrics.get("converged"),
        )
