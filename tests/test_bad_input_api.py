"""Bad input thrown at the Python API: the loaders' half of the bad-input tests.

The API's `error: ...`: every case must raise HusaiError, never another exception type or a
traceback from inside a dependency (a broken tensor file: a one-line message), and every file that
was on disk before is unchanged. Covers load_model, load_sae, load_activations, load_config and
load_study on copies of the session's run folders, and that checksums stay out of the metadata.
Also: nothing in husai unpickles a file (an AST scan of every .py file under husai/, recursively).
The ways to break files are in bad_input.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from husai.errors import HusaiError

from bad_input import (
    MODEL_CONFIG_FAULTS,
    SAE_CFG_FAULTS,
    SAFETENSORS_FAULTS,
    STUDY_YAMLS,
    YAMLS,
    break_json,
    corrupt,
    write_yaml,
)
from cli_harness import assert_unchanged, pristine, snapshot, work  # noqa: F401

PKG = Path(__file__).resolve().parent.parent / "husai"


# ---------------------------------------------------------------------------------------------
# the Python API: HusaiError, never another exception type, and nothing on disk touched


def _api_load_model(work):
    from husai.model.checkpoint import load_model

    return load_model(work / "run")


def _api_load_sae(work):
    from husai.sae.checkpoint import load_sae

    return load_sae(work / "sae" / "seed_1")


def _api_load_activations(work):
    from husai.sae.activations import load_activations

    return load_activations(work / "acts.safetensors")


@pytest.mark.parametrize("how", SAFETENSORS_FAULTS)
@pytest.mark.parametrize("target", ["model", "sae", "acts"])
def test_api_bad_tensor_files(work, target, how):
    path, fn = {
        "model": (work / "run" / "model.safetensors", _api_load_model),
        "sae": (work / "sae" / "seed_1" / "sae_weights.safetensors", _api_load_sae),
        "acts": (work / "acts.safetensors", _api_load_activations),
    }[target]
    fn(work)  # loads before the damage
    corrupt(path, how)
    before = snapshot(work)
    with pytest.raises(HusaiError) as e:
        fn(work)
    assert "\n" not in str(e.value)
    assert_unchanged(before, work)


@pytest.mark.parametrize("fault", list(MODEL_CONFIG_FAULTS))
def test_api_load_model_bad_config(work, fault):
    break_json(work / "run" / "config.json", MODEL_CONFIG_FAULTS, fault)
    before = snapshot(work)
    with pytest.raises(HusaiError):
        _api_load_model(work)
    assert_unchanged(before, work)


@pytest.mark.parametrize("fault", [f for f in SAE_CFG_FAULTS if f != "hook_bad"])
def test_api_load_sae_bad_cfg(work, fault):
    break_json(work / "sae" / "seed_1" / "cfg.json", SAE_CFG_FAULTS, fault)
    before = snapshot(work)
    with pytest.raises(HusaiError):
        _api_load_sae(work)
    assert_unchanged(before, work)


def test_api_load_sae_missing_folder(tmp_path):
    from husai.sae.checkpoint import load_sae

    with pytest.raises(HusaiError, match="not found"):
        load_sae(tmp_path / "nothing")


@pytest.mark.parametrize("kind", list(YAMLS))
def test_api_load_config_bad_yaml(tmp_path, kind):
    from husai.sae.config import load_config

    write_yaml(tmp_path / "c.yaml", YAMLS, kind)
    with pytest.raises(HusaiError):
        load_config(tmp_path / "c.yaml")


# bad_hook is not here: hooks are checked against the model by run_study (the CLI cases cover it)
@pytest.mark.parametrize("kind", [k for k in STUDY_YAMLS if k != "bad_hook"])
def test_api_load_study_bad_yaml(tmp_path, kind):
    from husai.study.config import load_study

    write_yaml(tmp_path / "s.yaml", STUDY_YAMLS, kind)
    with pytest.raises(HusaiError):
        load_study(tmp_path / "s.yaml")


@pytest.mark.parametrize("loader", ["load_config", "load_study"])
def test_api_config_loaders_missing_file(tmp_path, loader):
    from husai.sae.config import load_config
    from husai.study.config import load_study

    with pytest.raises(HusaiError, match="not found"):
        {"load_config": load_config, "load_study": load_study}[loader](tmp_path / "nothing.yaml")


def test_api_load_model_missing(tmp_path):
    from husai.model.checkpoint import load_model

    with pytest.raises(HusaiError, match="not found"):
        load_model(tmp_path / "nothing")


def test_checksum_does_not_leak_into_metadata(work):
    from husai.io import CHECKSUM_KEY, load_tensors
    from husai.sae.activations import load_activations

    _, meta = load_activations(work / "acts.safetensors")
    assert CHECKSUM_KEY not in meta and meta["hook_name"] == "blocks.0.hook_resid_post"
    # a file without a checksum (as SAELens writes them) still loads
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2, 3)}, str(work / "plain.safetensors"))
    tensors, meta = load_tensors(work / "plain.safetensors")
    assert torch.equal(tensors["x"], torch.ones(2, 3)) and meta == {}


# ---------------------------------------------------------------------------------------------
# nothing is ever unpickled

UNPICKLERS = {
    ("torch", "load"),
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "load"),
    ("cPickle", "loads"),
    ("dill", "load"),
    ("dill", "loads"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("joblib", "load"),
    ("pandas", "read_pickle"),
    ("pd", "read_pickle"),
    ("shelve", "open"),
    ("marshal", "load"),
    ("marshal", "loads"),
}
NUMPY_LOADERS = {("np", "load"), ("numpy", "load")}


def _dotted(node) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def unpickling_calls(source: str, filename: str = "<src>") -> list[str]:
    """Calls in `source` that can unpickle: torch.load, pickle.load(s), joblib.load, np.load(...,
    allow_pickle=True), also through aliases (import pickle as pk; from torch import load as tl)."""
    tree = ast.parse(source, filename)
    alias = {}  # local name -> module (or module.attr) it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = (
                    a.name if a.asname else a.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if not name:
            continue
        head, _, rest = name.partition(".")
        full = alias.get(head, head) + (f".{rest}" if rest else "")
        parts = full.split(".")
        key = (parts[0], parts[-1]) if len(parts) >= 2 else None
        np_key = {"numpy": "np"}.get(parts[0], parts[0]), parts[-1]
        if key in UNPICKLERS or (
            len(parts) == 2
            and (parts[0] in ("pickle", "dill", "torch", "joblib"))
            and parts[1] in ("load", "loads")
        ):
            found.append(f"{filename}:{node.lineno}: {name}")
        elif np_key in NUMPY_LOADERS or key in NUMPY_LOADERS:
            pickle_kw = [k for k in node.keywords if k.arg == "allow_pickle"]
            if any(
                not (isinstance(k.value, ast.Constant) and k.value.value is False)
                for k in pickle_kw
            ):
                found.append(f"{filename}:{node.lineno}: {name}(allow_pickle=...)")
    return found


def test_the_scanner_catches_unpicklers():
    bad = """
import torch, pickle as pk, joblib
import numpy as np
from torch import load as tl
from pickle import loads
torch.load("x"); pk.load(f); joblib.load("y"); np.load("z", allow_pickle=True); tl("w"); loads(b"")
np.load("fine.npy"); np.load("fine.npy", allow_pickle=False); json.load(f)
"""
    hits = unpickling_calls(bad)
    assert len(hits) == 6, hits


def test_nothing_in_husai_unpickles():
    """Every .py file under husai/, the subpackages (model, sae, analysis, study, cli) included."""
    files = sorted(PKG.rglob("*.py"))
    assert len(files) > 30, f"the scan found only {len(files)} files under {PKG}"
    assert {p.parent.name for p in files} >= {
        "husai",
        "model",
        "sae",
        "analysis",
        "study",
        "cli",
    }, files
    hits = []
    for path in files:
        hits += unpickling_calls(path.read_text(), str(path.relative_to(PKG.parent)))
    assert not hits, "husai must never unpickle a file: " + "; ".join(hits)
