"""Ways to break husai's input files, shared by the bad-input tests of the CLI and of the Python
API.

Those tests demand of every case: ONE line `error: ...` on stderr (or a HusaiError from the API), a
non-zero exit, no traceback, and every file that was on disk before is unchanged. Here: the
corruption helpers (`corrupt`, `edit_json`, `break_json`, `write_yaml`) and the fault tables both
halves run (SAFETENSORS_FAULTS, JSON_FAULTS, MODEL_CONFIG_FAULTS, SAE_CFG_FAULTS, YAMLS,
STUDY_YAMLS).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from husai.io import save_tensors


def corrupt(path: Path, how: str) -> None:
    """Break `path` in place: missing, empty, truncated, bitflip_header, bitflip_data,
    wrong_tensors, not_object (JSON), bad_json."""
    raw = path.read_bytes() if path.exists() else b""
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "bitflip_header":  # a bit in the 8-byte header length or the JSON header
        b = bytearray(raw)
        b[3] ^= 0x10
        path.write_bytes(bytes(b))
    elif how == "bitflip_data":  # one bit of one weight: safetensors alone would load it silently
        b = bytearray(raw)
        b[len(b) - 7] ^= 0x01
        path.write_bytes(bytes(b))
    elif how == "wrong_tensors":
        save_tensors(path, {"something_else": torch.zeros(3, 4), "and_more": torch.zeros(5)})
    elif how == "not_object":
        path.write_text("[1, 2, 3]\n")
    elif how == "bad_json":
        path.write_text('{"d_in": 12')
    else:
        raise ValueError(how)


def edit_json(path: Path, fn) -> None:
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


def break_json(path: Path, faults: dict, fault: str) -> None:
    """Apply `faults[fault]` to the JSON file `path`: a `corrupt` way (None) or an edit of its
    dict."""
    fn = faults[fault]
    corrupt(path, fault) if fn is None else edit_json(path, fn)


def write_yaml(path: Path, yamls: dict[str, str | None], kind: str) -> None:
    """Write `yamls[kind]` to `path`; None stands for 256 bytes that are no text at all."""
    if yamls[kind] is None:
        path.write_bytes(bytes(range(256)))
    else:
        path.write_text(yamls[kind])


SAFETENSORS_FAULTS = [
    "missing",
    "empty",
    "truncated",
    "bitflip_header",
    "bitflip_data",
    "wrong_tensors",
]
JSON_FAULTS = ["missing", "empty", "truncated", "bitflip_header", "not_object", "bad_json"]

# a model run's config.json: each fault is a `corrupt` way (None) or an edit of the parsed dict
MODEL_CONFIG_FAULTS = {
    **{h: None for h in JSON_FAULTS},
    "missing_field": lambda d: d.pop("p"),
    "missing_tl_field": lambda d: d.pop("d_mlp"),
    "extra_field": lambda d: d.update(surprise=1),
    "p_not_int": lambda d: d.update(p="23"),
    "p_not_prime": lambda d: d.update(p=24),
    "train_frac_str": lambda d: d.update(train_frac="0.6"),
    "operation_bad": lambda d: d.update(operation="div"),
    "seed_float": lambda d: d.update(split_seed=1.5),
    "seed_huge": lambda d: d.update(seed=10**30),
    "training_not_mapping": lambda d: d.update(training="fast"),
    "shape_mismatch": lambda d: d.update(d_model=64),
}

# an SAE folder's cfg.json, the same way
SAE_CFG_FAULTS = {
    **{h: None for h in JSON_FAULTS},
    "missing_d_in": lambda d: d.pop("d_in"),
    "d_sae_wrong": lambda d: d.update(d_sae=7),
    "k_zero": lambda d: d.update(k=0),
    "k_str": lambda d: d.update(k="4"),
    "architecture_bad": lambda d: d.update(architecture="gated"),
    "metadata_not_mapping": lambda d: d.update(metadata="husai"),
    "seed_not_int": lambda d: d["metadata"].update(seed="one"),
    "hook_bad": lambda d: d["metadata"].update(hook_name="blocks.7.hook_nothing"),
}

# SAE training configs (None: binary garbage, see write_yaml)
YAMLS = {
    "list": "- 1\n- 2\n",
    "scalar": "just a string\n",
    "invalid": "a: [1, 2\n",
    "unknown_key": "nonsense: 3\n",
    "wrong_type": "k: four\n",
    "nan": "lr: .nan\n",
    "inf": "dead_after_epochs: .inf\n",
    "binary": None,
}

# study configs: the YAMLS that are bad whatever the schema, and bad study sections
STUDY_YAMLS = {
    **{k: v for k, v in YAMLS.items() if k not in ("wrong_type", "nan", "inf")},
    "saes_not_list": "saes: {architecture: topk}\n",
    "negative_epochs": yaml.safe_dump({"saes": [{"architecture": "topk", "epochs": -1}]}),
    "huge_p_model": yaml.safe_dump({"model": {"p": 10**9}, "saes": [{"architecture": "topk"}]}),
    "model_not_mapping": yaml.safe_dump({"model": [1], "saes": [{"architecture": "topk"}]}),
    "bad_hook": yaml.safe_dump({"hooks": ["blocks.9.nothing"], "saes": [{"architecture": "topk"}]}),
}
