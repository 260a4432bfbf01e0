"""SAEs on disk in SAELens's layout, read and written without pickle.

    FOLDER/cfg.json                  SAELens 6 config: architecture, d_in, d_sae, dtype, device,
                                     apply_b_dec_to_input, normalize_activations,
                                     reshape_activations, k (topk), metadata {sae_lens_version,
                                     hook_name, husai fields: seed, model_path, ...}
    FOLDER/sae_weights.safetensors   W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
                                     b_dec [d_in], threshold [d_sae] (jumprelu)

husai architecture -> SAELens inference architecture: each family's SAE says (`saelens_form`):
topk -> topk, relu -> standard, jumprelu -> jumprelu, batchtopk and matryoshka -> jumprelu with a
constant threshold (what SAELens itself saves after BatchTopK and Matryoshka BatchTopK training). So
`sae_lens.SAE.load_from_disk(FOLDER)` loads any husai SAE, and `load_sae(FOLDER)` loads those
and SAEs saved by SAELens in these architectures.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from husai.errors import HusaiError
from husai.io import load_tensors, read_json, save_tensors, write_json

CFG_FILE, WEIGHTS_FILE = "cfg.json", "sae_weights.safetensors"
SAELENS_VERSION = "6.54.0"  # the format version written; >= 6.0 skips SAELens's pre-6 conversion


def save_sae(folder: str | Path, sae, slot: int = 0, metadata: dict | None = None) -> None:
    """Write seed slot `slot` of a stacked husai SAE as a SAELens folder (atomic file writes)."""
    folder = Path(folder)
    arch = sae.architecture
    saelens_arch, extra, extra_cfg = sae.saelens_form(slot)
    tensors = {
        "W_enc": sae.W_enc[slot],
        "W_dec": sae.W_dec[slot],
        "b_enc": sae.b_enc[slot],
        "b_dec": sae.b_dec[slot],
        **extra,
    }
    cfg = dict(
        architecture=saelens_arch,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        reshape_activations="none",
    )
    cfg.update(extra_cfg)
    meta = dict(
        sae_lens_version=SAELENS_VERSION,
        sae_lens_training_version=None,
        model_name="husai-modular",
        hook_name=None,
        hook_head_index=None,
        prepend_bos=False,
        context_size=3,
    )
    meta.update(husai_architecture=arch, husai_hparams=sae.slot_hparams([slot]))
    meta.update(metadata or {})
    cfg["metadata"] = meta
    save_tensors(folder / WEIGHTS_FILE, {k: v.detach().float() for k, v in tensors.items()})
    write_json(folder / CFG_FILE, cfg)


class LoadedSAE:
    """One SAE read from a SAELens folder. Shapes: W_enc [d_in, d_sae], W_dec [d_sae, d_in],
    b_enc [d_sae], b_dec [d_in], threshold [d_sae] or None; cfg is the cfg.json dict."""

    def __init__(self, cfg: dict, tensors: dict[str, torch.Tensor]):
        self.cfg = cfg
        self.architecture = cfg["architecture"]
        self.W_enc, self.W_dec = tensors["W_enc"], tensors["W_dec"]
        self.b_enc, self.b_dec = tensors["b_enc"], tensors["b_dec"]
        self.threshold = tensors.get("threshold")
        self.k = cfg.get("k")
        self.d_in, self.d_sae = self.W_enc.shape
        self.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
        self.rescale = bool(cfg.get("rescale_acts_by_decoder_norm", False))

    @property
    def hook_name(self) -> str | None:
        return (self.cfg.get("metadata") or {}).get("hook_name") or self.cfg.get("hook_name")

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [n, d_in] -> z [n, d_sae] (SAELens's inference encode for this architecture)."""
        x = x.to(self.W_enc.dtype)
        pre = (x - self.b_dec * self.apply_b_dec_to_input) @ self.W_enc + self.b_enc
        if self.architecture == "standard":
            return F.relu(pre)
        if self.architecture == "jumprelu":
            return F.relu(pre) * (pre > self.threshold)
        if self.rescale:
            pre = pre * self.W_dec.norm(dim=-1)
        vals, idx = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z [n, d_sae] -> x_hat [n, d_in]."""
        if self.rescale:
            z = z / self.W_dec.norm(dim=-1)
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def load_sae(folder: str | Path) -> LoadedSAE:
    """Read a SAELens-format folder (husai's or SAELens's own) -> LoadedSAE. No pickle."""
    folder = Path(folder)
    if not folder.is_dir():
        raise HusaiError(f"SAE folder not found: {folder}")
    cfg = read_json(folder / CFG_FILE, "SAE config")
    meta = cfg.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise HusaiError(
            f"{folder / CFG_FILE}: 'metadata' must be a mapping, got {type(meta).__name__}"
        )
    for key, typ in (("seed", int), ("hook_name", str), ("model_path", str)):
        v = (meta or {}).get(key)
        if v is not None and (not isinstance(v, typ) or isinstance(v, bool)):
            raise HusaiError(
                f"{folder / CFG_FILE}: 'metadata.{key}' must be {typ.__name__}, got {v!r}"
            )
    arch = cfg.get("architecture", "standard")
    if arch not in ("topk", "standard", "jumprelu"):
        raise HusaiError(
            f"{folder}: architecture {arch!r} is not supported (topk, standard, jumprelu)"
        )
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise HusaiError(
            f"{folder}: normalize_activations={cfg['normalize_activations']!r} is not supported"
        )
    tensors, _ = load_tensors(folder / WEIGHTS_FILE, "SAE weights")
    needed = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise HusaiError(f"{folder / WEIGHTS_FILE} lacks tensor(s) {', '.join(missing)}")
    d_in, d_sae = cfg.get("d_in"), cfg.get("d_sae")
    shapes = dict(
        W_enc=[d_in, d_sae], W_dec=[d_sae, d_in], b_enc=[d_sae], b_dec=[d_in], threshold=[d_sae]
    )
    for k in needed:
        if list(tensors[k].shape) != shapes[k]:
            raise HusaiError(
                f"{folder}: {k} has shape {list(tensors[k].shape)}, cfg.json says {shapes[k]}"
            )
    if arch == "topk" and not (isinstance(cfg.get("k"), int) and 1 <= cfg["k"] < d_sae):
        raise HusaiError(
            f"{folder}: topk SAE needs an integer k with 1 <= k < d_sae, got {cfg.get('k')!r}"
        )
    return LoadedSAE(cfg, {k: v.float() for k, v in tensors.items()})


def load_saes(out_dir: str | Path) -> dict[int, LoadedSAE]:
    """All SAEs of a `husai train-sae` output: {seed: LoadedSAE} from OUT/seed_*/ or OUT itself."""
    out_dir = Path(out_dir)
    subs = sorted(out_dir.glob("seed_*/" + CFG_FILE))
    if subs:
        return {int(p.parent.name[5:]): load_sae(p.parent) for p in subs}
    sae = load_sae(out_dir)
    return {int((sae.cfg.get("metadata") or {}).get("seed", 0)): sae}
