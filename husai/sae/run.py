"""A train-sae job from inputs to a finished output folder: the model's (or a file's) activations,
SAEs for every seed trained at once, their metrics (reconstruction and, with a model, the CE of
the model with the SAE spliced in), all saved in SAELens format. `husai train-sae` and every study
cell run this.

Output (claimed and staged through husai.outputs: written to a hidden folder beside OUT and swapped
in only when complete, so an error or a Ctrl-C never leaves a half-written OUT, and an earlier OUT,
replaced only with overwrite, stays whole until then):
    one seed:    OUT/cfg.json, OUT/sae_weights.safetensors, OUT/metrics.json
    many seeds:  OUT/seed_42/{cfg.json, sae_weights.safetensors}, ..., OUT/metrics.json
    both:        OUT/trajectory.safetensors (unless cfg.trajectory_epochs records nothing): the
                 weights along training, all seeds in one file (save_trajectory)
"""

from __future__ import annotations

import json
from pathlib import Path

from husai import timing
from husai.errors import HusaiError
from husai.interrupts import on_interrupt
from husai.outputs import SAE_OUTPUT, claim_folder, staged_folder


def run_train_sae(
    cfg,
    save_dir: str | Path,
    seeds: list[int],
    transformer_checkpoint=None,
    activations=None,
    layer=None,
    hook=None,
    split: str = "all",
    device: str = "cpu",
    wandb: bool = False,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """The whole train-sae command: inputs -> trained SAEs + metrics.json in save_dir. Returns
    metrics. An existing SAE output in save_dir is replaced only with overwrite (husai.outputs)."""
    out = Path(save_dir)
    mode = claim_folder(
        out,
        SAE_OUTPUT,
        "--save-dir",
        inputs=(transformer_checkpoint, activations),
        overwrite=overwrite,
    )
    kept = (
        f"the earlier output in {out} is untouched"
        if mode == "overwrite"
        else f"nothing was written to {out}"
    )
    with on_interrupt(
        f"{kept} (SAEs are saved only when training finishes); run the same command again"
    ):
        return _train_sae(
            cfg,
            out,
            seeds,
            transformer_checkpoint,
            activations,
            layer,
            hook,
            split,
            device,
            wandb,
            progress,
        )


def _train_sae(
    cfg,
    out: Path,
    seeds,
    transformer_checkpoint,
    activations,
    layer,
    hook,
    split,
    device,
    wandb,
    progress,
) -> dict:
    from husai.io import write_json
    from husai.sae.checkpoint import save_sae

    with timing.stage("activations"):
        acts, eval_acts, info, model = _inputs(
            transformer_checkpoint, activations, layer, hook, split, device
        )
    cfg.validate(acts.shape[1])
    # Everything from here on is written into a staging folder that becomes `out` only once the
    # SAEs are saved; W&B's offline run goes inside it, so it is part of the output.
    with staged_folder(out, "--save-dir") as stage:
        run = None
        if wandb:
            from husai.wandb_log import init_run

            run = init_run(
                "husai-sae", dict(cfg.to_dict(), seeds=seeds, **info), stage, name=out.name
            )
        calibration = None
        if (
            cfg.family.target() is not None
        ):  # the penalty weight for that L0, then every seed trains at it
            from dataclasses import replace

            from husai.sae.calibrate import calibrate_weight

            weight, table, bracketed = calibrate_weight(acts, cfg, seeds[0], device)
            name = cfg.family.sparsity_key  # the penalty weight's key
            calibration = dict(
                target_l0=cfg.target_l0,
                knob=name,
                start=getattr(cfg, name),
                weight=weight,
                bracketed=bracketed,
                seed=seeds[0],
                table=table,
            )
            cfg = replace(cfg, **{name: weight})
        with timing.stage("training"):
            res = _train_with_progress(acts, cfg, seeds, device, progress, run)
        metrics = _metrics(res, cfg, seeds, info, eval_acts, model, device)
        if calibration is not None:
            metrics["calibration"] = calibration
        with timing.stage("writing"):
            for i, s in enumerate(seeds):
                meta = dict(
                    info,
                    hook_name=info.get("hook_name"),
                    seed=s,
                    husai_config=cfg.to_dict(),
                    diverged_at_step=res.diverged_at_step,
                )
                save_sae(stage if len(seeds) == 1 else stage / f"seed_{s}", res.sae, i, meta)
            save_trajectory(stage / TRAJECTORY_FILE, res.trajectory, seeds)
            write_json(stage / "metrics.json", metrics)
    if res.diverged_at_step is not None:
        raise HusaiError(
            f"training diverged: NaN loss at step {res.diverged_at_step}; the last good checkpoint "
            f"(end of epoch {len(res.history)}) is saved in {out}"
        )
    return metrics


TRAJECTORY_FILE = "trajectory.safetensors"


def save_trajectory(path: Path, trajectory: dict[int, dict], seeds: list[int]) -> None:
    """TrainResult.trajectory -> one safetensors file: for each recorded epoch E, W_dec.epoch{E} and
    W_enc_T.epoch{E} [S, d_sae, d_in] float32 and live.epoch{E} [S, d_sae] uint8 (1 = fired during
    epoch E; all 1 at epoch 0, the init), seed slot s = seeds[s]; metadata "seeds" and "epochs"
    (JSON lists). Nothing is written when nothing was recorded."""
    import torch

    from husai.io import save_tensors

    if not trajectory:
        return
    tensors = {}
    for e, snap in sorted(trajectory.items()):
        tensors.update(
            {
                f"W_dec.epoch{e}": snap["W_dec"],
                f"W_enc_T.epoch{e}": snap["W_enc_T"],
                f"live.epoch{e}": snap["live"].to(torch.uint8),
            }
        )
    save_tensors(
        path, tensors, dict(seeds=json.dumps(list(seeds)), epochs=json.dumps(sorted(trajectory)))
    )


def _inputs(transformer_checkpoint, activations, layer, hook, split, device):
    """-> (acts [N, d] to train on, eval_acts [p^2 or N, d], info for cfg.json, model or None)."""
    from husai.sae.activations import extract, load_activations, model_activations

    if (transformer_checkpoint is None) == (activations is None):
        raise HusaiError("give exactly one of --transformer-checkpoint DIR or --activations FILE")
    if activations is not None:
        if layer is not None or hook is not None:
            raise HusaiError(
                "--layer/--hook pick activations from a model; they cannot be used with "
                "--activations"
            )
        acts, meta = load_activations(activations)
        return (
            acts,
            acts,
            dict(hook_name=meta.get("hook_name"), activations_path=str(activations)),
            None,
        )
    from husai.model.checkpoint import load_model
    from husai.model.data import make_tokens

    acts, info = model_activations(transformer_checkpoint, layer, hook, split, device)
    model, _ = load_model(transformer_checkpoint, device=device)
    eval_acts = (
        acts
        if split == "all"
        else extract(model, info["hook_name"], make_tokens(info["p"]).to(device)).cpu()
    )
    return acts, eval_acts, info, model


def _train_with_progress(acts, cfg, seeds, device, progress: bool, run):
    """train_saes with a progress bar (unless not progress) and per-epoch W&B logging (run or
    None)."""
    from husai.sae.train import train_saes

    bar, on_step = None, None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        bar = Progress(
            TextColumn("train-sae"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        task = bar.add_task("", total=None, info="")

        def on_step(step, total, stats, dead):
            if step % 10 == 0 or step == total:
                bar.update(
                    task,
                    completed=step,
                    total=total,
                    info=(
                        f"loss {stats['loss'].mean():.4g}  L0 {stats['l0'].mean():.1f}  "
                        f"EV {stats['ev'].mean():.3f}  dead {dead.mean():.2%}"
                    ),
                )

    def on_epoch(row):
        if run is not None:
            run.log({k: (sum(v) / len(v) if isinstance(v, list) else v) for k, v in row.items()})

    if bar is not None:
        bar.start()
    try:
        return train_saes(acts, cfg, seeds, device, on_step=on_step, on_epoch=on_epoch)
    finally:
        if bar is not None:
            bar.stop()
        if run is not None:
            run.finish()


def _metrics(res, cfg, seeds, info, eval_acts, model, device) -> dict:
    """metrics.json of a train-sae output: per-seed SAE metrics over eval_acts, their means, the
    run."""
    from husai.sae.metrics import cosine_to_init, reconstruction_metrics, spliced_metrics

    sae = res.sae
    per_seed = reconstruction_metrics(sae, eval_acts.to(device))
    base = {}
    if model is not None:
        from husai.model.data import make_labels, make_tokens

        tokens, labels = (
            make_tokens(info["p"]).to(device),
            make_labels(info["p"], info["operation"]).to(device),
        )
        spliced, base = spliced_metrics(
            sae, model, info["hook_name"], tokens, labels, eval_acts.to(device)
        )
        per_seed.update(spliced)
    else:  # activations from a file: no model to splice into; keep the keys, as null
        for key in (
            "spliced_acc",
            "spliced_ce",
            "delta_ce",
            "ce_loss_recovered_zero",
            "ce_loss_recovered_mean",
        ):
            per_seed[key] = [None] * len(seeds)
    per_seed["cosine_to_init"] = cosine_to_init(sae.W_dec.detach(), res.W_dec_init)
    if hasattr(sae, "coeff"):  # ReLU / JumpReLU: the penalty weight each seed trained with
        per_seed["sparsity_coeff"] = sae.coeff.tolist()
    keys = list(per_seed)
    return dict(
        config=cfg.to_dict(),
        seeds=seeds,
        source=info,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        steps=res.steps,
        wall_seconds=res.wall_seconds,
        diverged_at_step=res.diverged_at_step,
        epochs_trained=len(res.history),
        converged=res.converged,
        baselines=base,
        history=res.history,
        per_seed={
            str(s): dict({k: per_seed[k][i] for k in keys}, wall_seconds=res.wall_seconds)
            for i, s in enumerate(seeds)
        },
        mean={k: (None if None in per_seed[k] else sum(per_seed[k]) / len(seeds)) for k in keys},
    )
