"""The model's training config: TrainConfig (every key of `husai train-model` and a study's `model`
section), the presets, and the config.json it is recorded as (husai.model.train uses them).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from husai import __version__
from husai.errors import HusaiError
from husai.model.checkpoint import model_config_from_json
from husai.model.data import OPERATIONS, check_modulus, check_seed
from husai.model.transformer import ModelConfig


@dataclass
class TrainConfig:
    """Everything that determines a trained model. Saved in config.json."""

    p: int = 113
    """Prime modulus."""
    operation: str = "add"
    """add, sub or mul."""
    n_layers: int = 1
    """Transformer blocks."""
    seed: int = 0
    """Seed of the weight initialisation."""
    split_seed: int | None = None
    """Seed of the train/test split (defaults to `seed`)."""
    train_frac: float = 0.3
    """Fraction of the p^2 pairs used for training (Nanda et al.: 0.3)."""
    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1.0
    """AdamW (decoupled) weight decay; 1.0 drives the grokking clean-up."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.98
    """AdamW beta2 (Nanda et al.)."""
    warmup_epochs: int = 10
    """Linear learning-rate warm-up (Nanda et al.: 10 steps)."""
    epochs: int = 40_000
    """Maximum number of full-batch epochs."""
    eval_every: int = 100
    """Epochs between evaluations (history rows, stopping check, best checkpoint)."""
    checkpoint_every: int = 1000
    """Epochs between resumable checkpoints (model + optimizer state)."""
    snapshot_every: int = 0
    """Epochs between weight snapshots (OUT/snapshots/epoch_E.safetensors, weights only, ~0.9 MB at
    p = 113), from which metrics.json's `progress` gives Nanda et al.'s progress measures over
    training, computed with the final key frequencies (husai.model.analyze.progress_measures). 0:
    none."""
    stop_test_acc: float = 0.999
    """Stop only once test accuracy reaches this ..."""
    stop_frac_single_freq: float = 0.8
    """... and this fraction of MLP neurons is single-frequency (see module docstring)."""
    cleanup_weight_decay: float = 0.0
    """Weight decay used after the first evaluation whose train and test accuracies reach
    `cleanup_from_train_acc` and `cleanup_from_test_acc` (the clean-up phase); 0 keeps
    `weight_decay` throughout. The switch epoch is read back from history.jsonl on --resume: it
    needs no state of its own. Measured (fast preset, seed 0, 1 thread): switching to 3 / 6 / 10
    once test accuracy >= 0.99 (epoch 300) cut the clean epoch from 1,400 to 650 / 450 / 400;
    switching to 10 right after memorisation (epoch 100) grokked and cleaned by epoch 200, with the
    same key frequencies. Also measured and not adopted: Grokfast's EMA gradient filter
    (Lee et al. 2024; alpha 0.98, lamb 2.0) slowed this preset down (grokked at 450, clean at
    1,600), and train_frac 0.6 had not finished after twice the old preset's time."""
    cleanup_from_train_acc: float = 0.99
    """Train accuracy that starts the clean-up phase (0.99: once the model has memorised; the
    memorised checkpoint is saved at that same evaluation, before the switch)."""
    cleanup_from_test_acc: float = 0.0
    """Test accuracy that starts the clean-up phase, too (0.99 waits until the model has
    grokked)."""
    run_all_epochs: bool = False
    """Ignore the stopping rule and train for `epochs`."""
    preset: str = "custom"
    """Name of the preset these values came from."""

    def model_config(self) -> ModelConfig:
        """The architecture this run trains (Nanda et al.'s widths; p and n_layers from here)."""
        return ModelConfig(p=self.p, n_layers=self.n_layers)

    def validate(self) -> None:
        check_modulus(self.p)
        if self.operation not in OPERATIONS:
            raise HusaiError(
                f"unknown operation {self.operation!r}; choose one of {', '.join(OPERATIONS)}"
            )
        if not 0.0 < self.train_frac < 1.0:
            raise HusaiError(
                f"train fraction must lie strictly between 0 and 1, got {self.train_frac}"
            )
        for name in ("n_layers", "epochs", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise HusaiError(
                    f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}"
                )
        if self.snapshot_every < 0:
            raise HusaiError(f"--snapshot-every must be >= 0 (0: none), got {self.snapshot_every}")
        check_seed(self.seed, "seed")
        if self.split_seed is not None:
            check_seed(self.split_seed, "split seed")
        if not (self.lr > 0 and math.isfinite(self.lr)) or not (
            self.weight_decay >= 0 and math.isfinite(self.weight_decay)
        ):
            raise HusaiError(
                f"need lr > 0 and weight decay >= 0, got lr={self.lr}, "
                f"weight_decay={self.weight_decay}"
            )
        if not (self.cleanup_weight_decay >= 0 and math.isfinite(self.cleanup_weight_decay)):
            raise HusaiError(f"need cleanup weight decay >= 0, got {self.cleanup_weight_decay}")


PRESETS: dict[str, dict] = {
    # Nanda et al.'s recipe: 30% of pairs, lr 1e-3, wd 1.0; groks after ~8-14k epochs.
    "canonical": dict(train_frac=0.3, lr=1e-3, weight_decay=1.0, epochs=40_000),
    # Same recipe with half the pairs (still memorise-then-generalise: BENCHMARKS.md, fast preset)
    # and a larger learning rate, which speeds both grokking and the weight-decay clean-up (the
    # decoupled decay per step is lr * wd). Measured in BENCHMARKS.md. Weight decay 10 from the
    # evaluation at which the training pairs are fit (the memorised checkpoint) then cut
    # grokked-and-clean from 1,400 epochs to 200 / 200 / 250 (evaluating every 50) (seeds 0 / 1 /
    # 2; 4-5 key frequencies, 81-86% single-frequency neurons), see TrainConfig.cleanup_weight_decay
    # and bench_fast_preset.py. Evaluations every 25 epochs switch to the clean-up 25 epochs after
    # the pairs are fit rather than up to 50, and stop a run at most 25 epochs after it is clean:
    # seed 0 175 epochs (21.3 s) instead of 200 (26.4 s), seed 2 225 instead of 250 (23.6 vs 29.4 s,
    # 2 threads, AMD); weight decay 15 instead of 10 had not cleaned seed 0 up after 4 minutes.
    # Evaluations every 10 epochs draw the grokking story as curves (17 points instead of 7). One
    # evaluation (loss and accuracy on both splits, the single-frequency share over all p^2
    # inputs) costs about 2 full-batch training steps (2 threads; 4 on a loaded machine), so every
    # 10 epochs adds ~0.2 steps an epoch against ~0.08 at 25, and seed 0 stops at 170 epochs
    # instead of 175 (clean-up from epoch 80, the same key frequencies {8, 21, 25, 35}): ~8% more
    # time. Every 5 epochs stopped at 155 but cost ~40% more time per epoch. Snapshots stay every
    # 25 epochs: each adds a progress-measure evaluation after training and 0.9 MB on disk.
    "fast": dict(
        train_frac=0.5,
        lr=3e-3,
        weight_decay=1.0,
        cleanup_weight_decay=10.0,
        cleanup_from_train_acc=0.99,
        cleanup_from_test_acc=0.0,
        epochs=10_000,
        eval_every=10,
        snapshot_every=25,
    ),
}


def config_json(cfg: TrainConfig, device: str) -> dict:
    mc = cfg.model_config()
    training = {
        k: v
        for k, v in dataclasses.asdict(cfg).items()
        if k not in ("p", "operation", "n_layers", "seed", "split_seed", "train_frac", "preset")
    }
    return dict(
        **mc.to_hooked_transformer_config(),
        p=cfg.p,
        operation=cfg.operation,
        seed=cfg.seed,
        split_seed=cfg.seed if cfg.split_seed is None else cfg.split_seed,
        train_frac=cfg.train_frac,
        preset=cfg.preset,
        husai_version=__version__,
        device=device,
        training=training,
        stopping=dict(
            rule="test_acc >= stop_test_acc and frac_neurons_single_freq >= stop_frac_single_freq, "
            "checked every eval_every epochs",
            stop_test_acc=cfg.stop_test_acc,
            stop_frac_single_freq=cfg.stop_frac_single_freq,
            run_all_epochs=cfg.run_all_epochs,
        ),
    )


def config_from_json(d: dict) -> TrainConfig:
    model_config_from_json(d)
    training = d.get("training", {})
    if not isinstance(training, dict):
        raise HusaiError(
            f"config.json: field 'training' must be a mapping, got {type(training).__name__}"
        )
    defaults = dataclasses.asdict(TrainConfig())
    kw = {}
    for k, v in training.items():
        if k not in defaults:
            continue
        want = type(defaults[k])
        ok = (
            isinstance(v, bool)
            if want is bool
            else (
                isinstance(v, (int, float))
                and not isinstance(v, bool)
                and (want is float or isinstance(v, int))
            )
        )
        if not ok:
            raise HusaiError(
                f"config.json: field 'training.{k}' must be {want.__name__}, got {v!r}"
            )
        kw[k] = v
    return TrainConfig(
        p=d["p"],
        operation=d["operation"],
        n_layers=d["n_layers"],
        seed=d["seed"],
        split_seed=d["split_seed"],
        train_frac=d["train_frac"],
        preset=d.get("preset", "custom"),
        **kw,
    )
