"""A husai model run as a TransformerLens model, for whichever TransformerLens is installed.

    model = to_transformer_lens("runs/model")     # TransformerLens 4: TransformerBridge,
                                                  # 3: HookedTransformer
    logits, cache = model.run_with_cache(tokens)  # tokens [batch, 3] -> logits [batch, 3, p]

The logits equal husai's own `Transformer.run_with_cache` (up to float rounding) and every hook
husai exposes (`Transformer.hook_names()`: `hook_embed`, `blocks.0.mlp.hook_post`, ...) is a
cache key under the same name with the same shape, in both major versions. One difference is
TransformerLens's, not husai's: 4.x's native bridge (checked on 4.3.0) records the attention
*pattern* under `blocks.L.attn.hook_attn_scores`, where husai and 3.x record the scores before the
softmax (masked with -inf); `attn.hook_pattern` is the same everywhere.

How each version is built (husai's weights already use HookedTransformer's names and shapes):
  4.x  `TransformerBridge.boot_native(TransformerBridgeConfig(...))`, the toy-model path that
       replaced `HookedTransformer(HookedTransformerConfig(...))` in 4.0, then the weights through
       `convert_tl_checkpoint` (HookedTransformer per-head tensors -> the bridge's nn.Linear
       layout) and `load_state_dict(strict=True)`. No `enable_compatibility_mode()`: its weight
       processing centres W_U and the writing weights, which shifts the logits.
  3.x  `HookedTransformer(HookedTransformerConfig(...))` and `load_state_dict(strict=False)`, only
       because HookedTransformer keeps its causal mask and IGNORE value as state-dict buffers.
The version is found by asking for `HookedTransformer`, which 4.x answers with an ImportError.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from husai.errors import HusaiError
from husai.model.checkpoint import load_model

INSTALL_HINT = (
    "pip install 'husai[transformer-lens]' (TransformerLens 3 or 4; README, 'The model stage')"
)


def transformer_lens_major() -> int:
    """3 if the installed TransformerLens has `HookedTransformer` (2.x and 3.x do), else 4."""
    try:
        import transformer_lens  # noqa: F401
    except ModuleNotFoundError as e:
        if (
            e.name != "transformer_lens"
        ):  # installed but broken: its own traceback says more than we could
            raise
        raise HusaiError(f"TransformerLens is not installed: {INSTALL_HINT}") from None
    try:
        from transformer_lens import HookedTransformer  # noqa: F401  (removed in 4.0)
    except ImportError:
        return 4
    return 3


def to_transformer_lens(
    run_dir: str | Path, *, checkpoint: str = "model", device: str | torch.device = "cpu"
):
    """Load a husai model run (`husai train-model --out DIR`) into the installed TransformerLens.

    checkpoint: 'model' (final weights), 'best', 'memorised' or 'untrained'
    (husai.model.checkpoint). Returns a TransformerBridge (TransformerLens 4) or a HookedTransformer
    (3), in eval mode on `device`. Raises HusaiError (one line) if TransformerLens is missing or
    `run_dir` is no run.
    """
    major = (
        transformer_lens_major()
    )  # before reading the run: a missing extra is the likelier mistake
    run_dir = Path(run_dir)
    if run_dir.is_dir() and not (run_dir / "config.json").is_file():
        raise HusaiError(
            f"{run_dir} is not a husai model run: it has no config.json "
            "(a run folder is what `husai train-model --out DIR` writes)"
        )
    model, _ = load_model(run_dir, checkpoint)  # validates config.json and every tensor's shape
    fields = model.cfg.to_hooked_transformer_config()
    weights = model.state_dict()
    # TransformerLens initialises its weights from the global RNG before ours replace them; a fork
    # keeps loading a model from changing the caller's random numbers.
    with torch.random.fork_rng(devices=[]):
        tl_model = (
            _bridge(fields, weights, device)
            if major == 4
            else _hooked_transformer(fields, weights, device)
        )
    return tl_model.eval()


def _bridge(fields: dict, weights: dict[str, torch.Tensor], device):
    """TransformerLens 4: a native TransformerBridge holding husai's weights."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

    cfg = TransformerBridgeConfig(**fields)
    bridge = TransformerBridge.boot_native(cfg, device=device)
    bridge.load_state_dict(convert_tl_checkpoint(weights, cfg), strict=True)
    return bridge


def _hooked_transformer(fields: dict, weights: dict[str, torch.Tensor], device):
    """TransformerLens 3 (and 2): a HookedTransformer holding husai's weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with warnings.catch_warnings():
        # 3.9 warns on every HookedTransformer; its replacement is the 4.x path above, which a
        # 3.x user cannot take while SAELens 6 pins transformer-lens < 4.
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**fields, device=str(device)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    left = [k for k in missing if not k.endswith(("mask", "IGNORE"))]  # its buffers, not weights
    if left or unexpected:
        raise HusaiError(
            f"HookedTransformer and husai disagree on weight names: missing {left}, unexpected "
            f"{unexpected}"
        )
    return model.to(device)
