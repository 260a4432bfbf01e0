"""Bad input thrown at every command and at the Python API (issue 6, item 3).

Every case must end in ONE line `error: ...` on stderr (the doctor prints its report on stdout
instead), a non-zero exit, no traceback, and every file that was on disk before is unchanged.
CLI cases run `python -m husai.cli` in a subprocess, on copies of the session's run folders.
Also: nothing in husai unpickles a file (an AST scan of the package source).
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from cli_harness import (HUSAI, assert_clean_error, assert_unchanged, husai, husai_forked,  # noqa: F401
                         husai_subprocess, pristine, snapshot, work)
from husai.errors import HusaiError
from husai.io import save_tensors

PKG = Path(__file__).resolve().parent.parent / "husai"


# ---------------------------------------------------------------------------------------------
# ways to break a file


def corrupt(path: Path, how: str) -> None:
    """Break `path` in place: missing, empty, truncated, bitflip_header, bitflip_data, wrong_tensors,
    not_object (JSON), truncated_json."""
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


SAFETENSORS_FAULTS = ["missing", "empty", "truncated", "bitflip_header", "bitflip_data", "wrong_tensors"]
JSON_FAULTS = ["missing", "empty", "truncated", "bitflip_header", "not_object", "bad_json"]


def _latest_ckpt(work: Path) -> Path:
    return sorted((work / "run" / "checkpoints").glob("epoch_*.safetensors"))[-1]


# commands that read the model's weights (W = the case's work folder)
MODEL_READERS = {
    "analyze-model": ["analyze-model", "W/run"],
    "extract-activations": ["extract-activations", "--transformer-checkpoint", "W/run", "--out", "W/new.safetensors"],
    "train-sae": ["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/newsae", "--epochs", "1",
                  "--expansion", "2", "--k", "4", "--quiet"],
    "fourier": ["fourier", "W/sae", "--model", "W/run", "--n-null", "1"],
}


@pytest.mark.parametrize("how", SAFETENSORS_FAULTS)
@pytest.mark.parametrize("cmd", list(MODEL_READERS))
def test_bad_model_weights(work, cmd, how):
    corrupt(work / "run" / "model.safetensors", how)
    before = snapshot(work)
    r = husai(work, *MODEL_READERS[cmd])
    assert_clean_error(r, "model.safetensors")
    assert_unchanged(before, work)
    assert not (work / "new.safetensors").exists() and not (work / "newsae").exists()


@pytest.mark.parametrize("how", ["empty", "truncated", "bitflip_data", "wrong_tensors"])
def test_bad_resume_checkpoint(work, how):
    ckpt = _latest_ckpt(work)
    corrupt(ckpt, how)
    before = snapshot(work)
    assert_clean_error(husai(work, "train-model", "--out", "W/run", "--resume"), ckpt.name)
    assert_unchanged(before, work)


@pytest.mark.parametrize("how", ["not_object", "missing_row_fields"])
def test_bad_history_on_resume(work, how):
    h = work / "run" / "history.jsonl"
    h.write_text("[1, 2]\n" if how == "not_object" else '{"train_loss": 1.0}\n')
    before = snapshot(work)
    assert_clean_error(husai(work, "train-model", "--out", "W/run", "--resume"), "history.jsonl")
    assert_unchanged(before, work)


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


@pytest.mark.parametrize("fault", list(MODEL_CONFIG_FAULTS))
def test_bad_model_config_json(work, fault):
    path = work / "run" / "config.json"
    fn = MODEL_CONFIG_FAULTS[fault]
    corrupt(path, fault) if fn is None else edit_json(path, fn)
    before = snapshot(work)
    assert_clean_error(husai(work, "analyze-model", "W/run"), "config")
    assert_unchanged(before, work)


def test_bad_training_section_on_resume(work):
    edit_json(work / "run" / "config.json", lambda d: d["training"].update(lr="fast"))
    before = snapshot(work)
    assert_clean_error(husai(work, "train-model", "--out", "W/run", "--resume"), "training.lr")
    assert_unchanged(before, work)


SAE_READERS = {
    "fourier": ["fourier", "W/sae", "--model", "W/run", "--n-null", "1"],
    "compare": ["compare", "W/sae", "--json", "W/cmp.json", "--n-null", "2"],
}


@pytest.mark.parametrize("how", SAFETENSORS_FAULTS)
@pytest.mark.parametrize("cmd", list(SAE_READERS))
def test_bad_sae_weights(work, cmd, how):
    corrupt(work / "sae" / "seed_1" / "sae_weights.safetensors", how)
    before = snapshot(work)
    assert_clean_error(husai(work, *SAE_READERS[cmd]), "seed_1")
    assert_unchanged(before, work)
    assert not (work / "cmp.json").exists()


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


@pytest.mark.parametrize("fault", list(SAE_CFG_FAULTS))
@pytest.mark.parametrize("cmd", list(SAE_READERS))
def test_bad_sae_cfg_json(work, cmd, fault):
    path = work / "sae" / "seed_1" / "cfg.json"
    fn = SAE_CFG_FAULTS[fault]
    corrupt(path, fault) if fn is None else edit_json(path, fn)
    before = snapshot(work)
    r = husai(work, *SAE_READERS[cmd])
    if cmd == "compare" and fault == "hook_bad":  # compare needs --force for SAEs of different hooks
        assert_clean_error(r, "hook")
    else:
        assert_clean_error(r)
    assert_unchanged(before, work)


@pytest.mark.parametrize("how", SAFETENSORS_FAULTS)
def test_bad_activation_file(work, how):
    corrupt(work / "acts.safetensors", how)
    before = snapshot(work)
    r = husai(work, "train-sae", "--activations", "W/acts.safetensors", "--save-dir", "W/newsae", "--quiet")
    assert_clean_error(r, "acts.safetensors")
    assert_unchanged(before, work)
    assert not (work / "newsae").exists()


def test_activation_file_with_a_1d_tensor(work):
    save_tensors(work / "acts.safetensors", {"activations": torch.zeros(10)})
    before = snapshot(work)
    assert_clean_error(husai(work, "train-sae", "--activations", "W/acts.safetensors", "--save-dir", "W/o", "--quiet"), "2-D")
    assert_unchanged(before, work)


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


def _write_yaml(path: Path, kind: str) -> None:
    if YAMLS[kind] is None:
        path.write_bytes(bytes(range(256)))
    else:
        path.write_text(YAMLS[kind])


@pytest.mark.parametrize("kind", list(YAMLS))
def test_bad_sae_yaml(work, kind):
    _write_yaml(work / "c.yaml", kind)
    before = snapshot(work)
    r = husai(work, "train-sae", "--transformer-checkpoint", "W/run", "--config", "W/c.yaml", "--save-dir", "W/o", "--quiet")
    assert_clean_error(r)
    assert_unchanged(before, work)
    assert not (work / "o").exists()


STUDY_YAMLS = {**{k: v for k, v in YAMLS.items() if k not in ("wrong_type", "nan", "inf")},
               "saes_not_list": "saes: {architecture: topk}\n",
               "negative_epochs": yaml.safe_dump({"saes": [{"architecture": "topk", "epochs": -1}]}),
               "huge_p_model": yaml.safe_dump({"model": {"p": 10**9}, "saes": [{"architecture": "topk"}]}),
               "model_not_mapping": yaml.safe_dump({"model": [1], "saes": [{"architecture": "topk"}]}),
               "bad_hook": yaml.safe_dump({"hooks": ["blocks.9.nothing"], "saes": [{"architecture": "topk"}]})}


@pytest.mark.parametrize("kind", list(STUDY_YAMLS))
def test_bad_study_yaml(work, kind):
    path = work / "s.yaml"
    if STUDY_YAMLS[kind] is None:
        path.write_bytes(bytes(range(256)))
    else:
        path.write_text(STUDY_YAMLS[kind])
    before = snapshot(work)
    assert_clean_error(husai(work, "study", "--config", "W/s.yaml", "--out", "W/study"))
    assert_unchanged(before, work)
    assert not (work / "study").exists()


# negative, zero, huge or non-finite sizes and values
BAD_VALUES = {
    "epochs_negative": (["train-model", "--p", "23", "--epochs", "-1", "--out", "W/m"], "epochs"),
    "p_huge": (["train-model", "--p", str(10**9), "--out", "W/m"], "prime"),
    "p_huge_prime": (["train-model", "--p", "1000003", "--epochs", "1", "--out", "W/m"], "memory"),
    "p_composite": (["train-model", "--p", "21", "--out", "W/m"], "prime"),
    "n_layers_huge": (["train-model", "--p", "23", "--n-layers", "100000", "--out", "W/m"], "memory"),
    "eval_every_zero": (["train-model", "--p", "23", "--eval-every", "0", "--out", "W/m"], "eval-every"),
    "checkpoint_every_negative": (["train-model", "--p", "23", "--checkpoint-every", "-5", "--out", "W/m"], "checkpoint-every"),
    "train_frac_one": (["train-model", "--p", "23", "--train-frac", "1", "--out", "W/m"], "train fraction"),
    "lr_nan": (["train-model", "--p", "23", "--lr", "nan", "--out", "W/m"], "lr"),
    "weight_decay_nan": (["train-model", "--p", "23", "--weight-decay", "nan", "--out", "W/m"], "weight"),
    "seed_huge": (["train-model", "--p", "23", "--seed", str(10**20), "--out", "W/m"], "seed"),
    "threads_negative": (["train-model", "--p", "23", "--threads", "-1", "--out", "W/m"], "threads"),
    "device_bogus": (["train-model", "--p", "23", "--device", "toaster", "--out", "W/m"], "device"),
    "preset_bogus": (["train-model", "--preset", "slow", "--out", "W/m"], "preset"),
    "operation_bogus": (["train-model", "--p", "23", "--operation", "div", "--out", "W/m"], "operation"),
    "epochs_not_int": (["train-model", "--epochs", "many", "--out", "W/m"], "epochs"),
    "sae_k_zero": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--k", "0"], "k"),
    "sae_k_huge": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--k", "1000000"], "k"),
    "sae_expansion_huge": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--expansion", "100000"], "memory"),
    "sae_expansion_zero": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--expansion", "0"], "expansion"),
    "sae_batch_size_zero": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--batch-size", "0"], "batch_size"),
    "sae_epochs_negative": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--epochs", "-1"], "epochs"),
    "sae_lr_negative": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--lr", "-1"], "lr"),
    "sae_seeds_bad": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--seeds", "1,x"], "seeds"),
    "sae_seeds_duplicate": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--seeds", "1,1"], "duplicates"),
    "sae_seed_huge": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--seed", str(10**20)], "seed"),
    "sae_layer_out_of_range": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--layer", "5"], "layer"),
    "sae_architecture_bogus": (["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", "--architecture", "gated"], "architecture"),
    "sae_two_sources": (["train-sae", "--transformer-checkpoint", "W/run", "--activations", "W/acts.safetensors", "--save-dir", "W/m"], "exactly one"),
    "sae_no_source": (["train-sae", "--save-dir", "W/m"], "exactly one"),
    "extract_hook_bogus": (["extract-activations", "--transformer-checkpoint", "W/run", "--out", "W/m", "--hook", "nope"], "hook"),
    "extract_split_bogus": (["extract-activations", "--transformer-checkpoint", "W/run", "--out", "W/m", "--split", "val"], "split"),
    "extract_missing_model": (["extract-activations", "--transformer-checkpoint", "W/nothing", "--out", "W/m"], "not found"),
    "fourier_n_null_zero": (["fourier", "W/sae", "--model", "W/run", "--n-null", "0"], "n-null"),
    "fourier_missing_sae": (["fourier", "W/nothing", "--model", "W/run"], "not found"),
    "fourier_not_an_sae": (["fourier", "W/run", "--model", "W/run"], "not an SAE folder"),
    "compare_one_sae": (["compare", "W/sae/seed_1", "--json", "W/m"], "two"),
    "compare_same_twice": (["compare", "W/sae/seed_1", "W/sae/seed_1", "--json", "W/m"], "more than once"),
    "compare_no_json": (["compare", "W/sae"], "--json"),
    "compare_n_null_one": (["compare", "W/sae", "--json", "W/m", "--n-null", "1"], "n-null"),
    "compare_threshold": (["compare", "W/sae", "--json", "W/m", "--threshold", "2"], "threshold"),
    "study_workers_zero": (["study", "--config", "W/nothing.yaml", "--out", "W/m", "--workers", "0"], "workers"),
    "study_missing_config": (["study", "--config", "W/nothing.yaml", "--out", "W/m"], "not found"),
    "study_executor_bogus": (["study", "--executor", "slurm", "--out", "W/m"], "executor"),
    "report_missing": (["report", "W/nothing"], "not a study folder"),
    "report_not_study": (["report", "W/run"], "not a study folder"),
    "analyze_missing": (["analyze-model", "W/nothing"], "not found"),
    "analyze_file": (["analyze-model", "W/afile"], "config"),
    "unknown_command": (["frobnicate"], "frobnicate"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values(work, case):
    args, match = BAD_VALUES[case]
    before = snapshot(work)
    r = husai(work, *args)
    assert_clean_error(r, match)
    assert_unchanged(before, work)
    assert not (work / "m").exists()


# output paths that are files, or cannot be written

OUTPUT_COMMANDS = {
    "train-model": lambda o: ["train-model", "--p", "23", "--epochs", "2", "--eval-every", "1", "--out", o],
    "extract-activations": lambda o: ["extract-activations", "--transformer-checkpoint", "W/run", "--out", o],
    "train-sae": lambda o: ["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", o, "--epochs", "1",
                            "--expansion", "2", "--k", "4", "--quiet"],
    "fourier": lambda o: ["fourier", "W/sae", "--model", "W/run", "--n-null", "1", "--json", o],
    "compare": lambda o: ["compare", "W/sae", "--json", o, "--n-null", "2"],
    "study": lambda o: ["study", "--config", "W/ok.yaml", "--out", o],
}
# a config that validates; the study fails before training because its output cannot be written
OK_STUDY = {"model": {"p": 23, "epochs": 2}, "seeds": [1, 2], "saes": [{"architecture": "topk", "expansion": 2, "k": 4}]}


# For fourier, compare and extract-activations the output IS a file: overwriting an existing file is
# what the user asked for, so only "a path under a file" is bad input for them.
@pytest.mark.parametrize("cmd, where", [(c, w) for c in OUTPUT_COMMANDS for w in ("is_file", "under_file")
                                        if not (c in ("fourier", "compare", "extract-activations") and w == "is_file")])
def test_output_path_is_a_file(work, cmd, where):
    (work / "ok.yaml").write_text(yaml.safe_dump(OK_STUDY))
    out = "W/afile" if where == "is_file" else "W/afile/out"
    before = snapshot(work)
    assert_clean_error(husai(work, *OUTPUT_COMMANDS[cmd](out)), "afile")
    assert_unchanged(before, work)


@pytest.fixture
def readonly_dir(work):
    """A folder nothing can be written into, even as root (where chmod 0o555 does not stop writes):
    chmod, then chattr +i when the chmod alone is not enough, else a path under a regular file."""
    d = work / "ro"
    d.mkdir()
    (d / "keep.txt").write_text("precious\n")
    d.chmod(0o555)
    immutable = False

    def writable() -> bool:
        probe = d / ".probe"
        try:
            probe.write_text("x")
        except OSError:
            return False
        probe.unlink()
        return True

    if writable():  # root: try the immutable attribute
        if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0:
            immutable = True
    target = d
    if writable():  # no way to protect a folder here: a path whose parent is a regular file is unwritable too
        target = work / "afile"
    assert not writable() or target != d
    yield target
    if immutable:
        subprocess.run(["chattr", "-i", str(d)], check=True)
    d.chmod(0o755)


@pytest.mark.parametrize("cmd", list(OUTPUT_COMMANDS))
def test_readonly_output_dir(work, readonly_dir, cmd):
    (work / "ok.yaml").write_text(yaml.safe_dump(OK_STUDY))
    name = "out.json" if cmd in ("fourier", "compare") else "out"
    out = str(readonly_dir / name)
    before = snapshot(work)
    r = husai(work, *OUTPUT_COMMANDS[cmd](out))
    assert_clean_error(r, str(readonly_dir.name))
    assert_unchanged(before, work)
    assert not (readonly_dir / name).exists()


def test_train_model_refuses_to_clobber_a_foreign_folder(work):
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("years of work\n")
    before = snapshot(work)
    assert_clean_error(husai(work, "train-model", "--p", "23", "--epochs", "2", "--out", "W/mine"), "already holds")
    assert_clean_error(husai(work, "train-model", "--p", "23", "--epochs", "2", "--out", "W/mine", "--overwrite"),
                       "thesis.tex")
    assert_unchanged(before, work)


def test_resume_without_a_run(work):
    (work / "empty").mkdir()
    assert_clean_error(husai(work, "train-model", "--out", "W/empty", "--resume"), "nothing to resume")


def test_report_with_a_bad_study_yaml(work):
    (work / "st").mkdir()
    (work / "st" / "study.yaml").write_text("- not\n- a mapping\n")
    before = snapshot(work)
    assert_clean_error(husai(work, "report", "W/st"))
    assert_unchanged(before, work)


@pytest.mark.parametrize("how", ["missing_folder", "empty", "bitflip_header", "wrong_tensors"])
def test_doctor_with_a_bad_checkpoint(work, how):
    if how == "missing_folder":
        target = "W/nothing"
    else:
        corrupt(work / "run" / "model.safetensors", how)
        target = "W/run"
    before = snapshot(work)
    r = husai(work, "doctor", "--transformer-checkpoint", target)
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    assert "FAIL" in r.stdout or r.stderr.startswith("error: "), r.stdout + r.stderr
    assert_unchanged(before, work)


SAMPLE = ["p_huge", "sae_expansion_huge", "compare_threshold", "study_executor_bogus", "report_missing",
          "epochs_not_int"]


@pytest.mark.parametrize("case", SAMPLE)
def test_same_outcome_in_a_real_subprocess(work, case):
    """The forked runner and a fresh `python -m husai.cli` agree (exit status, stderr)."""
    args, match = BAD_VALUES[case]
    a, b = husai_subprocess(work, *args), husai_forked(work, *args)
    assert_clean_error(a, match)
    assert (a.returncode, a.stderr) == (b.returncode, b.stderr)


def test_real_subprocess_on_a_corrupt_checkpoint(work):
    corrupt(work / "run" / "model.safetensors", "bitflip_data")
    before = snapshot(work)
    assert_clean_error(husai_subprocess(work, "analyze-model", "W/run"), "checksum")
    assert_unchanged(before, work)


# ---------------------------------------------------------------------------------------------
# the Python API: HusaiError, never another exception type, and nothing on disk touched


def _api_load_model(work):
    from husai.checkpoint import load_model

    return load_model(work / "run")


def _api_load_sae(work):
    from husai.sae_io import load_sae

    return load_sae(work / "sae" / "seed_1")


def _api_load_activations(work):
    from husai.activations import load_activations

    return load_activations(work / "acts.safetensors")


@pytest.mark.parametrize("how", SAFETENSORS_FAULTS)
@pytest.mark.parametrize("target", ["model", "sae", "acts"])
def test_api_bad_tensor_files(work, target, how):
    path, fn = {"model": (work / "run" / "model.safetensors", _api_load_model),
                "sae": (work / "sae" / "seed_1" / "sae_weights.safetensors", _api_load_sae),
                "acts": (work / "acts.safetensors", _api_load_activations)}[target]
    fn(work)  # loads before the damage
    corrupt(path, how)
    before = snapshot(work)
    with pytest.raises(HusaiError) as e:
        fn(work)
    assert "\n" not in str(e.value)
    assert_unchanged(before, work)


@pytest.mark.parametrize("fault", list(MODEL_CONFIG_FAULTS))
def test_api_load_model_bad_config(work, fault):
    path = work / "run" / "config.json"
    fn = MODEL_CONFIG_FAULTS[fault]
    corrupt(path, fault) if fn is None else edit_json(path, fn)
    before = snapshot(work)
    with pytest.raises(HusaiError):
        _api_load_model(work)
    assert_unchanged(before, work)


@pytest.mark.parametrize("fault", [f for f in SAE_CFG_FAULTS if f != "hook_bad"])
def test_api_load_sae_bad_cfg(work, fault):
    path = work / "sae" / "seed_1" / "cfg.json"
    fn = SAE_CFG_FAULTS[fault]
    corrupt(path, fault) if fn is None else edit_json(path, fn)
    before = snapshot(work)
    with pytest.raises(HusaiError):
        _api_load_sae(work)
    assert_unchanged(before, work)


def test_api_load_sae_missing_folder(tmp_path):
    from husai.sae_io import load_sae

    with pytest.raises(HusaiError, match="not found"):
        load_sae(tmp_path / "nothing")


@pytest.mark.parametrize("kind", list(YAMLS))
def test_api_load_config_bad_yaml(tmp_path, kind):
    from husai.train_sae import load_config

    _write_yaml(tmp_path / "c.yaml", kind)
    with pytest.raises(HusaiError):
        load_config(tmp_path / "c.yaml")


# bad_hook is not here: hooks are checked against the model by run_study (the CLI cases cover it)
@pytest.mark.parametrize("kind", [k for k in STUDY_YAMLS if k != "bad_hook"])
def test_api_load_study_bad_yaml(tmp_path, kind):
    from husai.study_config import load_study

    path = tmp_path / "s.yaml"
    if STUDY_YAMLS[kind] is None:
        path.write_bytes(bytes(range(256)))
    else:
        path.write_text(STUDY_YAMLS[kind])
    with pytest.raises(HusaiError):
        load_study(path)


@pytest.mark.parametrize("loader", ["load_config", "load_study"])
def test_api_config_loaders_missing_file(tmp_path, loader):
    from husai.study_config import load_study
    from husai.train_sae import load_config

    with pytest.raises(HusaiError, match="not found"):
        {"load_config": load_config, "load_study": load_study}[loader](tmp_path / "nothing.yaml")


def test_api_load_model_missing(tmp_path):
    from husai.checkpoint import load_model

    with pytest.raises(HusaiError, match="not found"):
        load_model(tmp_path / "nothing")


def test_checksum_does_not_leak_into_metadata(work):
    from husai.activations import load_activations
    from husai.io import CHECKSUM_KEY, load_tensors

    _, meta = load_activations(work / "acts.safetensors")
    assert CHECKSUM_KEY not in meta and meta["hook_name"] == "blocks.0.hook_resid_post"
    # a file without a checksum (as SAELens writes them) still loads
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2, 3)}, str(work / "plain.safetensors"))
    tensors, meta = load_tensors(work / "plain.safetensors")
    assert torch.equal(tensors["x"], torch.ones(2, 3)) and meta == {}


# ---------------------------------------------------------------------------------------------
# nothing is ever unpickled

UNPICKLERS = {("torch", "load"), ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"),
              ("cPickle", "load"), ("cPickle", "loads"), ("dill", "load"), ("dill", "loads"),
              ("cloudpickle", "load"), ("cloudpickle", "loads"), ("joblib", "load"), ("pandas", "read_pickle"),
              ("pd", "read_pickle"), ("shelve", "open"), ("marshal", "load"), ("marshal", "loads")}
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
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
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
        if key in UNPICKLERS or (len(parts) == 2 and (parts[0] in ("pickle", "dill", "torch", "joblib")) and parts[1] in ("load", "loads")):
            found.append(f"{filename}:{node.lineno}: {name}")
        elif np_key in NUMPY_LOADERS or key in NUMPY_LOADERS:
            pickle_kw = [k for k in node.keywords if k.arg == "allow_pickle"]
            if any(not (isinstance(k.value, ast.Constant) and k.value.value is False) for k in pickle_kw):
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
    hits = []
    for path in sorted(PKG.rglob("*.py")):
        hits += unpickling_calls(path.read_text(), str(path.relative_to(PKG.parent)))
    assert not hits, "husai must never unpickle a file: " + "; ".join(hits)
