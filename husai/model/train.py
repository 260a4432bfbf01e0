"""Train the modular-addition transformer until it has grokked AND cleaned up its circuit.

One visible loop, nanoGPT style: seed, data, model, optimizer, then epochs of full-batch AdamW
with periodic eval, checkpoint and log. Stopping rule (recorded in config.json): test accuracy
>= 99.9% and >= 80% of MLP neurons single-frequency (>= 85% of their variance in one frequency,
Nanda et al. 2023 section 4.2, where 433/512 = 85% pass). Test accuracy saturates hundreds of
epochs before weight decay has cleaned the circuit up (section 5: "cleanup"), and SAEs are
validated against that clean structure, so accuracy alone is not a stopping rule.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from husai.errors import HusaiError
from husai.interrupts import on_interrupt
from husai.io import read_json, read_jsonl, save_tensors, write_json, write_jsonl
from husai.model.analyze import analyze_model, loss_acc, progress_measures, single_freq_fraction
from husai.model.checkpoint import load_weights
from husai.model.config import PRESETS, TrainConfig, config_from_json, config_json  # noqa: F401
from husai.model.data import make_dataset
from husai.model.transformer import Transformer
from husai.outputs import MODEL_RUN, claim_folder, staged_folder
from husai.resources import check_fits_in_memory


def _train_bytes(cfg: TrainConfig) -> int:
    """Rough lower bound on the memory full-batch training needs: weights with their gradients and
    AdamW state (4 copies), plus the forward/backward activations and float64 logits of all p^2
    inputs."""
    mc = cfg.model_config()
    n_params = (
        2 * (cfg.p + 1) * mc.d_model
        + 3 * mc.d_model
        + cfg.n_layers * (4 * mc.d_model * mc.n_heads * mc.d_head + 2 * mc.d_model * mc.d_mlp)
    )
    rows = cfg.p * cfg.p * 3
    return 4 * 4 * n_params + rows * (
        8 * 3 * (cfg.p + 1) + 4 * 2 * cfg.n_layers * (mc.d_mlp + 4 * mc.d_model)
    )


MEMORISED_TEST_ACC = 0.9
"""An evaluation counts as memorised when it fits the training pairs (train accuracy >= 0.99) while
test accuracy is still below 0.9. The fast preset (seed 0) first fits the pairs at epoch 75: train
0.995, test 0.50."""


def memorised(row: dict) -> bool:
    return row["train_acc"] >= 0.99 and row["test_acc"] < MEMORISED_TEST_ACC


def _latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("epoch_*.safetensors"))
    return ckpts[-1] if ckpts else None


def _optimizer_tensors(model: Transformer, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in model.named_parameters():
        for k, v in opt.state[param].items():
            out[f"optim.{name}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return out


def _load_optimizer(
    model: Transformer, opt: torch.optim.Optimizer, extra: dict[str, torch.Tensor], path: Path
) -> None:
    state = {}
    for i, (name, param) in enumerate(model.named_parameters()):
        keys = [f"optim.{name}.{k}" for k in ("step", "exp_avg", "exp_avg_sq")]
        if not all(k in extra for k in keys):
            raise HusaiError(
                f"checkpoint {path} lacks optimizer state for {name}; cannot resume exactly"
            )
        state[i] = {k.rsplit(".", 1)[1]: extra[k].to(param.device) for k in keys}
        state[i]["step"] = state[i]["step"].cpu()
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})


def _cleanup_epoch(cfg: TrainConfig, history: list[dict]) -> int | None:
    """The evaluation epoch that started the clean-up phase (None: not yet, or no clean-up
    schedule)."""
    if not cfg.cleanup_weight_decay:
        return None
    return next(
        (
            r["epoch"]
            for r in history
            if r["train_acc"] >= cfg.cleanup_from_train_acc
            and r["test_acc"] >= cfg.cleanup_from_test_acc
        ),
        None,
    )


def train_model(
    cfg: TrainConfig,
    out: str | Path,
    device: str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    use_wandb: bool = False,
    threads: int | None = None,
    progress: bool = True,
) -> dict:
    """Train (or resume) a model into run folder `out`; returns the final metrics dict.

    `out` is claimed through husai.outputs: a new run goes straight into it (so that a killed run
    can be resumed), `resume` continues the run there, and `overwrite` trains a replacement in a
    staging folder beside it that is swapped in only when finished."""
    out = Path(out)
    t_start = time.time()
    mode = None

    def note() -> str:
        if mode == "overwrite":
            return f"the earlier run in {out} is untouched; the replacement was discarded"
        return _resume_note(out)

    with on_interrupt(note):  # one block, so that no moment is without its note
        mode, cfg = _claim_and_check(cfg, out, device, threads, overwrite, resume)
        if mode == "overwrite":
            with staged_folder(out, "--out") as stage:
                return _train(cfg, stage, device, False, use_wandb, threads, progress, t_start)
        return _train(cfg, out, device, mode == "resume", use_wandb, threads, progress, t_start)


def _claim_and_check(
    cfg: TrainConfig, out: Path, device: str, threads: int | None, overwrite: bool, resume: bool
) -> tuple[str, TrainConfig]:
    """Claim `out` (husai.outputs) and refuse what cannot run; returns the claim's mode and the
    config to train with (the recorded one when resuming)."""
    mode = claim_folder(out, MODEL_RUN, "--out", overwrite=overwrite, resume=resume)
    if resume and mode != "resume":
        raise HusaiError(f"nothing to resume in {out}: no model run there")
    if mode == "resume":
        cfg = config_from_json(read_json(out / "config.json", "model config"))
    cfg.validate()
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise HusaiError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HusaiError(f"device {device!r} requested but CUDA is not available")
    if threads is not None and threads < 0:
        raise HusaiError(f"--threads must be >= 1 (or 0 for torch's choice), got {threads}")
    check_fits_in_memory(
        _train_bytes(cfg),
        f"training a p = {cfg.p}, {cfg.n_layers}-layer model",
        device,
        "out of memory: use a smaller --p or fewer --n-layers (or run on a larger device)",
    )
    return mode, cfg


def _resume_note(out: Path) -> str:
    if not (out / "config.json").is_file():
        return f"nothing was written to {out}; run the same command again"
    ckpt = _latest_checkpoint(out)
    kept = f"its checkpoint {ckpt.name}" if ckpt else "its start (no checkpoint yet)"
    return (
        f"{out} keeps the run up to {kept}; continue it with husai train-model --out {out} --resume"
    )


def _train(
    cfg: TrainConfig,
    out: Path,
    device: str,
    resume: bool,
    use_wandb: bool,
    threads: int | None,
    progress: bool,
    t_start: float,
) -> dict:
    """The training loop proper, into `out` (which `train` has claimed)."""
    # AdamW with wd 1.0 pushes optimizer state into denormals, which are ~10x slower on CPUs.
    torch.set_flush_denormal(True)
    n_train = round(cfg.train_frac * cfg.p * cfg.p)
    if threads:
        torch.set_num_threads(threads)
    elif n_train < 4096 and device == "cpu":
        # Small batches gain nothing from a second thread, and OpenMP threads that spin at barriers
        # on a busy 2-core machine made a p = 47 run 20x slower (measured: 584 s instead of ~25 s).
        torch.set_num_threads(1)

    data = make_dataset(
        cfg.p, cfg.train_frac, cfg.seed if cfg.split_seed is None else cfg.split_seed, cfg.operation
    )
    model = Transformer(cfg.model_config()).init_weights(cfg.seed).to(device)
    opt = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2)
    )
    x_tr, y_tr = data.tokens[data.train_idx].to(device), data.labels[data.train_idx].to(device)
    x_te, y_te = data.tokens[data.test_idx].to(device), data.labels[data.test_idx].to(device)

    start, history, best = 0, [], (math.inf, -1)
    ckpt = _latest_checkpoint(out) if resume else None
    if ckpt is not None:
        extra = load_weights(model, ckpt, "checkpoint")
        _load_optimizer(model, opt, extra, ckpt)
        start = int(extra["epoch"].item())
        rows = read_jsonl(out / "history.jsonl")
        if not all(
            isinstance(r.get("epoch"), int) and isinstance(r.get("wall_seconds"), (int, float))
            for r in rows
        ):
            raise HusaiError(
                f"{out / 'history.jsonl'} has rows without an integer 'epoch' and 'wall_seconds'"
            )
        history = [r for r in rows if r["epoch"] <= start]
        best = (float(extra["best_test_loss"].item()), int(extra["best_epoch"].item()))
    cleanup = _cleanup_epoch(cfg, history)  # a function of history, so --resume restores it
    # Wall time accumulates across resumes (the rows kept say how long the run had taken).
    offset = history[-1]["wall_seconds"] if history else 0.0
    write_json(out / "config.json", config_json(cfg, device))

    run = None
    if use_wandb:
        from husai.wandb_log import init_run  # lazy: wandb is an optional extra

        run = init_run("husai-model", config_json(cfg, device), out)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("train-model"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        disable=not progress,
    )
    stopped = "max_epochs"
    with bar:
        task = bar.add_task("", total=cfg.epochs, completed=start, info="")
        epoch = start
        for epoch in range(start + 1, cfg.epochs + 1):
            for g in opt.param_groups:  # stateless warm-up: resumes exactly
                g["lr"] = cfg.lr * min(1.0, epoch / cfg.warmup_epochs)
                g["weight_decay"] = (
                    cfg.weight_decay if cleanup is None else cfg.cleanup_weight_decay
                )
            logits = model(x_tr)
            loss = F.cross_entropy(
                logits.to(torch.float64), y_tr
            )  # float64: train loss reaches ~1e-7
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if not torch.isfinite(loss):
                raise HusaiError(
                    f"training diverged: loss is {loss.item()} at epoch {epoch}; last good "
                    "checkpoint kept"
                )

            done = epoch == cfg.epochs
            if epoch % cfg.eval_every == 0 or done:
                model.eval()
                train_loss, train_acc = loss_acc(model, x_tr, y_tr)
                test_loss, test_acc = loss_acc(model, x_te, y_te)
                single = single_freq_fraction(model, data)
                model.train()
                row = dict(
                    epoch=epoch,
                    train_loss=train_loss,
                    train_acc=train_acc,
                    test_loss=test_loss,
                    test_acc=test_acc,
                    frac_neurons_single_freq=single,
                    wall_seconds=offset + time.time() - t_start,
                )
                history.append(row)
                if cleanup is None:
                    cleanup = _cleanup_epoch(cfg, history)
                if run is not None:
                    run.log(row, step=epoch)
                if test_loss < best[0]:
                    best = (test_loss, epoch)
                    save_tensors(out / "best.safetensors", model.state_dict(), {"epoch": epoch})
                if memorised(row) and not any(memorised(r) for r in history[:-1]):
                    # the stability controls train SAEs on the model before it generalised (husai
                    # study)
                    save_tensors(
                        out / "memorised.safetensors", model.state_dict(), {"epoch": epoch}
                    )
                bar.update(
                    task,
                    completed=epoch,
                    info=f"train {train_loss:.1e} test {test_loss:.1e} "
                    f"acc {test_acc:.3f} single-freq {single:.2f}",
                )
                if (
                    test_acc >= cfg.stop_test_acc
                    and single >= cfg.stop_frac_single_freq
                    and not cfg.run_all_epochs
                ):
                    stopped = "grokked_and_clean"
                    done = True
            if cfg.snapshot_every and epoch % cfg.snapshot_every == 0:
                save_tensors(
                    out / "snapshots" / f"epoch_{epoch:06d}.safetensors",
                    model.state_dict(),
                    {"epoch": epoch},
                )
            if epoch % cfg.checkpoint_every == 0 or done:
                write_jsonl(
                    out / "history.jsonl", history
                )  # before the checkpoint that refers to it
                state = {
                    **model.state_dict(),
                    **_optimizer_tensors(model, opt),
                    "epoch": torch.tensor(epoch),
                    "best_test_loss": torch.tensor(best[0], dtype=torch.float64),
                    "best_epoch": torch.tensor(best[1]),
                }
                save_tensors(
                    out / "checkpoints" / f"epoch_{epoch:06d}.safetensors", state, {"epoch": epoch}
                )
            if done:
                break

    save_tensors(out / "model.safetensors", model.state_dict(), {"epoch": epoch, "seed": cfg.seed})
    metrics = analyze_model(model.eval(), data)
    grok = next((r["epoch"] for r in history if r["test_acc"] >= 0.99), None)
    clean = next(
        (
            r["epoch"]
            for r in history
            if r["test_acc"] >= cfg.stop_test_acc
            and r["frac_neurons_single_freq"] >= cfg.stop_frac_single_freq
        ),
        None,
    )
    mem = next((r for r in history if memorised(r)), None)
    metrics.update(memorised_epoch=mem and mem["epoch"], memorised_test_acc=mem and mem["test_acc"])
    snaps = sorted((out / "snapshots").glob("epoch_*.safetensors"))
    if snaps:  # Nanda et al.'s progress measures over training, with the final key frequencies
        metrics["progress"] = progress_measures(
            snaps, cfg.model_config(), data, metrics["key_frequencies"], device
        )
    metrics.update(
        epochs_trained=epoch,
        grokked_epoch=grok,
        clean_epoch=clean,
        stopped_because=stopped,
        best_epoch=best[1],
        wall_seconds=offset + time.time() - t_start,
    )
    write_json(out / "metrics.json", metrics)
    if run is not None:
        run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        run.finish()
    return metrics
