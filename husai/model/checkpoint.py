"""Model run folders: weights in safetensors under TransformerLens names, config in JSON.

    DIR/config.json        TransformerLens config fields (TL_FIELDS) + p, operation, seeds,
                           hyperparameters
    DIR/model.safetensors  final weights (what `load_model(DIR)` returns)
    DIR/best.safetensors   weights at the lowest test loss seen
    DIR/checkpoints/epoch_XXXXXX.safetensors   weights + AdamW state, for --resume
    DIR/metrics.json, DIR/history.jsonl

A TransformerLens user loads a run with `husai.model.interop.to_transformer_lens(DIR)`:
TransformerLens 4 (`TransformerBridge.boot_native(TransformerBridgeConfig(**TL_FIELDS))`, weights
through `convert_tl_checkpoint`) or 3 (`HookedTransformer(HookedTransformerConfig(**TL_FIELDS))`,
weights as they are), same logits and hook names (tests/model/test_interop.py). TL_FIELDS are the
config fields both versions' config classes take.
"""

from __future__ import annotations

from pathlib import Path

import torch

from husai.errors import HusaiError
from husai.io import load_tensors, read_json
from husai.model.data import OPERATIONS, check_modulus, check_seed
from husai.model.transformer import ModelConfig, Transformer

TL_FIELDS = (
    "n_layers",
    "d_model",
    "n_heads",
    "d_head",
    "d_mlp",
    "d_vocab",
    "d_vocab_out",
    "n_ctx",
    "act_fn",
    "normalization_type",
    "attn_only",
    "positional_embedding_type",
    "original_architecture",
)
REQUIRED_FIELDS = TL_FIELDS + ("p", "operation", "seed", "split_seed", "train_frac")
OPTIONAL_FIELDS = ("husai_version", "preset", "training", "stopping", "device")


def model_config_from_json(cfg: dict, source: str = "config.json") -> ModelConfig:
    """Validate a run's config.json and build the ModelConfig it describes."""
    missing = [k for k in REQUIRED_FIELDS if k not in cfg]
    if missing:
        raise HusaiError(f"{source} is missing field(s): {', '.join(missing)}")
    extra = [k for k in cfg if k not in REQUIRED_FIELDS + OPTIONAL_FIELDS]
    if extra:
        raise HusaiError(f"{source} has unknown field(s): {', '.join(extra)}")
    for k in ("p", "n_layers", "d_model", "n_heads", "d_head", "d_mlp"):
        if not isinstance(cfg[k], int) or isinstance(cfg[k], bool) or cfg[k] < 1:
            raise HusaiError(f"{source}: field {k!r} must be a positive integer, got {cfg[k]!r}")
    tf = cfg["train_frac"]
    if not isinstance(tf, (int, float)) or isinstance(tf, bool) or not 0 < tf < 1:
        raise HusaiError(f"{source}: field 'train_frac' must be a number in (0, 1), got {tf!r}")
    if cfg["operation"] not in OPERATIONS:
        raise HusaiError(
            f"{source}: field 'operation' must be one of {', '.join(OPERATIONS)}, got "
            f"{cfg['operation']!r}"
        )
    for k in ("training", "stopping"):
        if not isinstance(cfg.get(k, {}), dict):
            raise HusaiError(
                f"{source}: field {k!r} must be a mapping, got {type(cfg[k]).__name__}"
            )
    try:
        check_modulus(cfg["p"])
        check_seed(cfg["seed"], "field 'seed'")
        check_seed(cfg["split_seed"], "field 'split_seed'")
    except HusaiError as e:
        raise HusaiError(f"{source}: {e}") from None
    mc = ModelConfig(
        p=cfg["p"],
        n_layers=cfg["n_layers"],
        d_model=cfg["d_model"],
        n_heads=cfg["n_heads"],
        d_head=cfg["d_head"],
        d_mlp=cfg["d_mlp"],
    )
    expected = mc.to_hooked_transformer_config()
    for k in TL_FIELDS:
        if k != "original_architecture" and cfg[k] != expected[k]:
            raise HusaiError(
                f"{source}: field {k!r} is {cfg[k]!r}, but husai's model needs {expected[k]!r}"
            )
    return mc


def load_weights(
    model: Transformer, path: Path, what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Load model weights (and return any extra tensors, e.g. optimizer state) from safetensors."""
    tensors, _ = load_tensors(path, what)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise HusaiError(
            f"{what} {path} lacks tensor(s) "
            f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"
        )
    for k, v in expected.items():
        if tensors[k].shape != v.shape:
            raise HusaiError(
                f"{what} {path}: {k} has shape {list(tensors[k].shape)} but the config needs "
                f"{list(v.shape)}"
            )
    model.load_state_dict({k: tensors[k].to(v.dtype) for k, v in expected.items()})
    return {k: v for k, v in tensors.items() if k not in expected}


WHICH = ("model", "best", "memorised", "untrained")


def load_model(
    run_dir: str | Path, which: str = "model", device: str | torch.device = "cpu"
) -> tuple[Transformer, dict]:
    """Load a trained model from its run folder. which: 'model' (final), 'best' (lowest test loss),
    'memorised' (the first evaluation that fit the training pairs before the model generalised,
    husai.model.train; the model-side control of stability) or 'untrained' (the run's own
    initialisation, rebuilt from its seed: the other control, Heap et al. 2025).

    Returns (model in eval mode on `device`, the config.json dict).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise HusaiError(f"model checkpoint not found: {run_dir}")
    if run_dir.is_file():  # a .safetensors path inside a run folder
        weights, run_dir = run_dir, run_dir.parent
    else:
        weights = run_dir / f"{which}.safetensors"
    if which not in WHICH:
        raise HusaiError(f"unknown model checkpoint {which!r}; choose one of {', '.join(WHICH)}")
    cfg = read_json(run_dir / "config.json", "model config")
    model = Transformer(model_config_from_json(cfg, str(run_dir / "config.json")))
    if which == "untrained":
        return model.init_weights(int(cfg.get("seed", 0))).to(device).eval(), cfg
    if which == "memorised" and not weights.is_file():
        raise HusaiError(
            f"{run_dir} has no memorised checkpoint (runs of husai < 0.3 did not keep one, and a "
            "model that generalised before its first evaluation never had one)"
        )
    load_weights(model, weights, "model checkpoint")
    return model.to(device).eval(), cfg
