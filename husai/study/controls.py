"""Model-side controls of stability: the same SAE recipe, on the same hook, with the same seeds, on
the same model before it generalised (its memorised checkpoint) and on an untrained model of the
same shape (the run's own initial weights; Heap et al. 2025 train SAEs on randomly initialised
models).

If the seeds agree as much on those as on the grokked model, the agreement says more about the
recipe and the data's shape than about features the model learned. The controls are measured
exactly like the cell (husai.analysis.seed_stability, data metric, CIs, nulls), with fewer seeds
(`control_seeds`, default 3: three pairs) to keep their cost to ~2/5 of the cell's training.
"""

from __future__ import annotations

CONTROLS = ("memorised", "untrained")
KEPT = ("pw_mcc_dec", "mean_max_abs_cos_dec", "shared_fraction", "reappearance", "act_mcc")


def contrast(cell_levels: dict, control: dict, n: int) -> dict:
    """Per metric, the cell's agreement minus the control's, paired by seed pair (the control's
    seeds are the cell's first n), with its CI: {metric: {value, ci}}."""
    import numpy as np

    from husai.analysis.agreement import bootstrap_ci

    out = {}
    for m, r in control.get("levels", {}).items():
        if m not in cell_levels:
            continue
        cell = np.array(cell_levels[m]["matrix"], dtype=float)[:n, :n]
        D = cell - np.array(r["matrix"], dtype=float)
        v = D[np.triu_indices(n, 1)]
        out[m] = dict(
            value=float(np.nanmean(v)) if np.isfinite(v).any() else None, ci=bootstrap_ci(D)
        )
    return out


def run_controls(
    model_dir, hook: str, cfg, seeds: list[int], controls=CONTROLS, threshold: float = 0.7
) -> dict:
    """{control: {epoch (memorised), test_acc, explained_variance [per seed], data_span, off_span,
    levels {metric: summary} for KEPT metrics, shared_init}} (module docstring); a control that
    cannot be built (e.g. no memorised checkpoint) is {"error": "..."}."""
    from husai.analysis.seed_stability import SeedSlot, sae_stability
    from husai.errors import HusaiError
    from husai.io import read_json
    from husai.sae.activations import model_activations
    from husai.sae.metrics import reconstruction_metrics
    from husai.sae.train import train_saes
    from husai.timing import stage

    out = {}
    metrics = read_json(f"{model_dir}/metrics.json", "model metrics")
    with stage("controls"):  # training and stability of each control: one stage, on few cells
        for which in controls:
            try:
                with stage("activations"):
                    acts, info = model_activations(model_dir, hook=hook, split="all", which=which)
                res = train_saes(acts, cfg, seeds)
            except HusaiError as e:
                out[which] = {"error": str(e)}
                continue
            saes = [SeedSlot(res.sae, s) for s in range(len(seeds))]
            W0 = res.W_dec_init.double()

            def init(d_in, d_sae, seed, W0=W0):
                W = W0[seeds.index(seed)]
                return W.T.clone(), W

            st = sae_stability(
                saes,
                [f"seed {s}" for s in seeds],
                acts.double(),
                seeds=seeds,
                init_fn=init,
                grid_p=info["p"] if info["operation"] == "add" else None,
                threshold=threshold,
            )
            ev = reconstruction_metrics(res.sae, acts.float())["explained_variance"]
            out[which] = dict(
                epoch=metrics.get("memorised_epoch") if which == "memorised" else 0,
                test_acc=metrics.get("memorised_test_acc") if which == "memorised" else None,
                explained_variance=ev,
                data_span=st["data_span"],
                off_span=st["off_span"],
                levels={m: st["levels"][m] for m in KEPT if m in st["levels"]},
                shared_init=st["references"].get("shared_init", {}).get("pw_mcc_dec"),
            )
    return out
