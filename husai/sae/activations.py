"""Activations at the `=` position of a husai model, and activation files.

An activation file is a safetensors file holding exactly one 2-D floating tensor [n, d]
(key "activations" when husai writes it; any key is accepted when reading), so activations from
any model can be brought to `husai train-sae --activations FILE`. husai's own files carry the
hook name, model path and split in the safetensors metadata.

Row order for `split="all"` is husai.model.data's: row a*p + b is the pair (a, b).
"""

from __future__ import annotations

from pathlib import Path

import torch

from husai.errors import HusaiError
from husai.io import load_tensors, save_tensors
from husai.model.checkpoint import load_model
from husai.model.data import make_dataset

SPLITS = ("all", "train", "test")
_QUERY_AXIS_2 = ("attn.hook_attn_scores", "attn.hook_pattern")  # [B, H, Q, P]: query axis is 2


def resolve_hook(model, layer: int | None = None, hook: str | None = None) -> str:
    """`--layer L` means blocks.L.hook_resid_post; `--hook NAME` names any hook. Validates."""
    names = model.hook_names()
    if hook is not None and layer is not None:
        raise HusaiError("give either --layer or --hook, not both")
    if hook is None:
        layer = 0 if layer is None else layer
        if not 0 <= layer < model.cfg.n_layers:
            raise HusaiError(
                f"--layer {layer} is out of range: the model has {model.cfg.n_layers} layer(s)"
            )
        hook = f"blocks.{layer}.hook_resid_post"
    if hook not in names:
        raise HusaiError(f"the model has no hook {hook!r}; valid hooks: {', '.join(names)}")
    return hook


def at_eq(hook_name: str, act: torch.Tensor) -> torch.Tensor:
    """A cached activation [B, pos, ...] (or [B, H, Q, P] for attention patterns) -> its value at
    the `=` (last) position, flattened to [B, d]."""
    if hook_name.endswith(_QUERY_AXIS_2):
        return act[:, :, -1].reshape(act.shape[0], -1)
    return act[:, -1].reshape(act.shape[0], -1)


def splice_at_eq(hook_name: str, new: torch.Tensor):
    """A run_with_hooks function that replaces the activation at `=` by new [B, d]."""

    def fn(act: torch.Tensor) -> torch.Tensor:
        act = act.clone()
        if hook_name.endswith(_QUERY_AXIS_2):
            act[:, :, -1] = new.view_as(act[:, :, -1])
        else:
            act[:, -1] = new.view_as(act[:, -1])
        return act

    return fn


@torch.no_grad()
def extract(model, hook_name: str, tokens: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Activations at `=` for tokens [N, 3] -> [N, d] float32."""
    out = []
    for i in range(0, tokens.shape[0], batch_size):
        _, cache = model.run_with_cache(tokens[i : i + batch_size], [hook_name], last_only=True)
        out.append(at_eq(hook_name, cache[hook_name]).float())
    return torch.cat(out)


def model_activations(
    run_dir: str | Path,
    layer: int | None = None,
    hook: str | None = None,
    split: str = "all",
    device: str = "cpu",
    which: str = "model",
) -> tuple[torch.Tensor, dict]:
    """Load a model run and extract activations. Returns (acts [N, d], info) where info holds
    hook_name, model_path, split, p, operation (what metrics and cfg.json need).
    which: the model's final weights, or another checkpoint (husai.model.checkpoint.load_model)."""
    if split not in SPLITS:
        raise HusaiError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    model, cfg = load_model(run_dir, which=which, device=device)
    hook_name = resolve_hook(model, layer, hook)
    data = make_dataset(cfg["p"], cfg["train_frac"], cfg["split_seed"], cfg["operation"])
    idx = {
        "all": torch.arange(data.tokens.shape[0]),
        "train": data.train_idx,
        "test": data.test_idx,
    }[split]
    acts = extract(model, hook_name, data.tokens[idx].to(device)).cpu()
    info = dict(
        hook_name=hook_name,
        model_path=str(Path(run_dir)),
        split=split,
        p=cfg["p"],
        operation=cfg["operation"],
    )
    return acts, info


def save_activations(path: str | Path, acts: torch.Tensor, info: dict | None = None) -> None:
    """Write acts [N, d] as a one-tensor safetensors file (atomically)."""
    check_activations(acts, str(path))
    save_tensors(
        path, {"activations": acts.float()}, metadata={k: str(v) for k, v in (info or {}).items()}
    )


def load_activations(path: str | Path) -> tuple[torch.Tensor, dict]:
    """Read a one-tensor safetensors file -> (acts [N, d] float32, metadata)."""
    tensors, meta = load_tensors(path, "activation file")
    if len(tensors) != 1:
        raise HusaiError(
            f"activation file {path} must hold exactly one tensor, found {len(tensors)}: "
            f"{', '.join(sorted(tensors)) or 'none'}"
        )
    acts = next(iter(tensors.values()))
    check_activations(acts, str(path))
    return acts.float(), dict(meta)


def check_activations(acts: torch.Tensor, source: str = "activations") -> None:
    if acts.ndim != 2:
        raise HusaiError(
            f"{source}: activations must be a 2-D tensor [n, d], got shape {list(acts.shape)}"
        )
    if not acts.is_floating_point():
        raise HusaiError(f"{source}: activations must be floating point, got {acts.dtype}")
    if acts.shape[0] < 2 or acts.shape[1] < 1:
        raise HusaiError(
            f"{source}: need at least 2 rows and 1 column, got shape {list(acts.shape)}"
        )
    if not torch.isfinite(acts).all():
        raise HusaiError(f"{source}: activations hold NaN or Inf")


def check_informative(acts: torch.Tensor) -> None:
    """Refuse activations [N, d] that carry no information: every row the same vector (up to float
    rounding). An SAE has nothing to learn from them, and explained variance is 0/0, undefined,
    which a naive formula reports as a perfect 1.0."""
    x = acts.double()
    total = (x - x.mean(0)).pow(2).sum()
    if total <= 1e-12 * x.pow(2).sum() or total == 0:
        raise HusaiError(
            f"the activations have zero variance (all {x.shape[0]} rows are the same vector): "
            "there is nothing for an SAE to learn, and explained variance would be 0/0; pick "
            "another hook or file"
        )
