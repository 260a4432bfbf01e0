"""Bad input thrown at every husai command: the CLI half of the bad-input tests.

Every case must end in ONE line `error: ...` on stderr (the doctor prints its report on stdout
instead), a non-zero exit, no traceback, and every file that was on disk before is unchanged.
Cases run `python -m husai.cli` in a separate process, on copies of the session's run folders:
bad model weights, resume checkpoints and histories, config.json and SAE files, activation files,
SAE and study YAMLs, bad values, output paths that are files or read-only, the doctor, and a
sample checked in a real subprocess. The ways to break files are in bad_input.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from husai.io import save_tensors

from bad_input import (
    MODEL_CONFIG_FAULTS,
    SAE_CFG_FAULTS,
    SAFETENSORS_FAULTS,
    STUDY_YAMLS,
    YAMLS,
    break_json,
    corrupt,
    edit_json,
    write_yaml,
)
from cli_harness import (  # noqa: F401
    assert_clean_error,
    assert_unchanged,
    husai,
    husai_forked,
    husai_subprocess,
    pristine,
    snapshot,
    work,
)


def _latest_ckpt(work: Path) -> Path:
    return sorted((work / "run" / "checkpoints").glob("epoch_*.safetensors"))[-1]


# commands that read the model's weights (W = the case's work folder)
MODEL_READERS = {
    "analyze-model": ["analyze-model", "W/run"],
    "extract-activations": [
        "extract-activations",
        "--transformer-checkpoint",
        "W/run",
        "--out",
        "W/new.safetensors",
    ],
    "train-sae": [
        "train-sae",
        "--transformer-checkpoint",
        "W/run",
        "--save-dir",
        "W/newsae",
        "--epochs",
        "1",
        "--expansion",
        "2",
        "--k",
        "4",
        "--quiet",
    ],
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


@pytest.mark.parametrize("fault", list(MODEL_CONFIG_FAULTS))
def test_bad_model_config_json(work, fault):
    break_json(work / "run" / "config.json", MODEL_CONFIG_FAULTS, fault)
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
    "compare": ["compare", "W/sae", "--json", "W/cmp.json"],
}


@pytest.mark.parametrize("how", SAFETENSORS_FAULTS)
@pytest.mark.parametrize("cmd", list(SAE_READERS))
def test_bad_sae_weights(work, cmd, how):
    corrupt(work / "sae" / "seed_1" / "sae_weights.safetensors", how)
    before = snapshot(work)
    assert_clean_error(husai(work, *SAE_READERS[cmd]), "seed_1")
    assert_unchanged(before, work)
    assert not (work / "cmp.json").exists()


@pytest.mark.parametrize("fault", list(SAE_CFG_FAULTS))
@pytest.mark.parametrize("cmd", list(SAE_READERS))
def test_bad_sae_cfg_json(work, cmd, fault):
    break_json(work / "sae" / "seed_1" / "cfg.json", SAE_CFG_FAULTS, fault)
    before = snapshot(work)
    r = husai(work, *SAE_READERS[cmd])
    if (
        cmd == "compare" and fault == "hook_bad"
    ):  # compare needs --force for SAEs of different hooks
        assert_clean_error(r, "hook")
    else:
        assert_clean_error(r)
    assert_unchanged(before, work)


@pytest.mark.parametrize("how", SAFETENSORS_FAULTS)
def test_bad_activation_file(work, how):
    corrupt(work / "acts.safetensors", how)
    before = snapshot(work)
    r = husai(
        work,
        "train-sae",
        "--activations",
        "W/acts.safetensors",
        "--save-dir",
        "W/newsae",
        "--quiet",
    )
    assert_clean_error(r, "acts.safetensors")
    assert_unchanged(before, work)
    assert not (work / "newsae").exists()


def test_activation_file_with_a_1d_tensor(work):
    save_tensors(work / "acts.safetensors", {"activations": torch.zeros(10)})
    before = snapshot(work)
    assert_clean_error(
        husai(
            work, "train-sae", "--activations", "W/acts.safetensors", "--save-dir", "W/o", "--quiet"
        ),
        "2-D",
    )
    assert_unchanged(before, work)


@pytest.mark.parametrize("kind", list(YAMLS))
def test_bad_sae_yaml(work, kind):
    write_yaml(work / "c.yaml", YAMLS, kind)
    before = snapshot(work)
    r = husai(
        work,
        "train-sae",
        "--transformer-checkpoint",
        "W/run",
        "--config",
        "W/c.yaml",
        "--save-dir",
        "W/o",
        "--quiet",
    )
    assert_clean_error(r)
    assert_unchanged(before, work)
    assert not (work / "o").exists()


@pytest.mark.parametrize("kind", list(STUDY_YAMLS))
def test_bad_study_yaml(work, kind):
    write_yaml(work / "s.yaml", STUDY_YAMLS, kind)
    before = snapshot(work)
    assert_clean_error(husai(work, "study", "--config", "W/s.yaml", "--out", "W/study"))
    assert_unchanged(before, work)
    assert not (work / "study").exists()


# negative, zero, huge (p 10**9, seeds 10**20) or non-finite sizes and values. A case's arguments
# are one string split on spaces; the helpers below hold the arguments that a command's cases share.


def _cmd(line: str) -> list[str]:
    return line.split()


def _model(flags: str) -> list[str]:
    return ["train-model", *flags.split(), "--out", "W/m"]


def _model_p23(flags: str) -> list[str]:
    return _model(f"--p 23 {flags}")


def _sae(flags: str) -> list[str]:
    return ["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", "W/m", *flags.split()]


def _extract(flags: str) -> list[str]:
    return [
        "extract-activations",
        "--transformer-checkpoint",
        "W/run",
        "--out",
        "W/m",
        *flags.split(),
    ]


BAD_VALUES = {  # case: (argv, a word the one `error:` line must hold)
    "epochs_negative": (_model_p23("--epochs -1"), "epochs"),
    "p_huge": (_model("--p 1000000000"), "prime"),
    "p_huge_prime": (_model("--p 1000003 --epochs 1"), "memory"),
    "p_composite": (_model("--p 21"), "prime"),
    "n_layers_huge": (_model_p23("--n-layers 100000"), "memory"),
    "eval_every_zero": (_model_p23("--eval-every 0"), "eval-every"),
    "checkpoint_every_negative": (_model_p23("--checkpoint-every -5"), "checkpoint-every"),
    "train_frac_one": (_model_p23("--train-frac 1"), "train fraction"),
    "lr_nan": (_model_p23("--lr nan"), "lr"),
    "weight_decay_nan": (_model_p23("--weight-decay nan"), "weight"),
    "seed_huge": (_model_p23("--seed 100000000000000000000"), "seed"),
    "threads_negative": (_model_p23("--threads -1"), "threads"),
    "device_bogus": (_model_p23("--device toaster"), "device"),
    "preset_bogus": (_model("--preset slow"), "preset"),
    "operation_bogus": (_model_p23("--operation div"), "operation"),
    "epochs_not_int": (_model("--epochs many"), "epochs"),
    "sae_k_zero": (_sae("--k 0"), "k"),
    "sae_k_huge": (_sae("--k 1000000"), "k"),
    "sae_expansion_huge": (_sae("--expansion 100000"), "memory"),
    "sae_expansion_zero": (_sae("--expansion 0"), "expansion"),
    "sae_batch_size_zero": (_sae("--batch-size 0"), "batch_size"),
    "sae_epochs_negative": (_sae("--epochs -1"), "epochs"),
    "sae_lr_negative": (_sae("--lr -1"), "lr"),
    "sae_seeds_bad": (_sae("--seeds 1,x"), "seeds"),
    "sae_seeds_duplicate": (_sae("--seeds 1,1"), "duplicates"),
    "sae_seed_huge": (_sae("--seed 100000000000000000000"), "seed"),
    "sae_layer_out_of_range": (_sae("--layer 5"), "layer"),
    "sae_architecture_bogus": (_sae("--architecture gated"), "architecture"),
    "sae_two_sources": (
        _cmd(
            "train-sae --transformer-checkpoint W/run --activations W/acts.safetensors"
            " --save-dir W/m"
        ),
        "exactly one",
    ),
    "sae_no_source": (_cmd("train-sae --save-dir W/m"), "exactly one"),
    "extract_hook_bogus": (_extract("--hook nope"), "hook"),
    "extract_split_bogus": (_extract("--split val"), "split"),
    "extract_missing_model": (
        _cmd("extract-activations --transformer-checkpoint W/nothing --out W/m"),
        "not found",
    ),
    "fourier_n_null_zero": (_cmd("fourier W/sae --model W/run --n-null 0"), "n-null"),
    "fourier_missing_sae": (_cmd("fourier W/nothing --model W/run"), "not found"),
    "fourier_not_an_sae": (_cmd("fourier W/run --model W/run"), "not an SAE folder"),
    "compare_one_sae": (_cmd("compare W/sae/seed_1 --json W/m"), "two"),
    "compare_same_twice": (_cmd("compare W/sae/seed_1 W/sae/seed_1 --json W/m"), "more than once"),
    "compare_no_json": (_cmd("compare W/sae"), "--json"),
    "compare_threshold": (_cmd("compare W/sae --json W/m --threshold 2"), "threshold"),
    "study_workers_zero": (_cmd("study --config W/nothing.yaml --out W/m --workers 0"), "workers"),
    "study_missing_config": (_cmd("study --config W/nothing.yaml --out W/m"), "not found"),
    "study_executor_bogus": (_cmd("study --executor slurm --out W/m"), "executor"),
    "report_missing": (_cmd("report W/nothing"), "not a study folder"),
    "report_not_study": (_cmd("report W/run"), "not a study folder"),
    "analyze_missing": (_cmd("analyze-model W/nothing"), "not found"),
    "analyze_file": (_cmd("analyze-model W/afile"), "config"),
    "unknown_command": (_cmd("frobnicate"), "frobnicate"),
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
    "train-model": lambda o: [
        "train-model",
        "--p",
        "23",
        "--epochs",
        "2",
        "--eval-every",
        "1",
        "--out",
        o,
    ],
    "extract-activations": lambda o: [
        "extract-activations",
        "--transformer-checkpoint",
        "W/run",
        "--out",
        o,
    ],
    "train-sae": lambda o: [
        "train-sae",
        "--transformer-checkpoint",
        "W/run",
        "--save-dir",
        o,
        "--epochs",
        "1",
        "--expansion",
        "2",
        "--k",
        "4",
        "--quiet",
    ],
    "fourier": lambda o: ["fourier", "W/sae", "--model", "W/run", "--n-null", "1", "--json", o],
    "compare": lambda o: ["compare", "W/sae", "--json", o],
    "study": lambda o: ["study", "--config", "W/ok.yaml", "--out", o],
}
# a config that validates; the study fails before training because its output cannot be written
OK_STUDY = {
    "model": {"p": 23, "epochs": 2},
    "seeds": [1, 2],
    "saes": [{"architecture": "topk", "expansion": 2, "k": 4}],
}


# For fourier, compare and extract-activations the output IS a file: overwriting an existing file is
# what the user asked for, so only "a path under a file" is bad input for them.
@pytest.mark.parametrize(
    "cmd, where",
    [
        (c, w)
        for c in OUTPUT_COMMANDS
        for w in ("is_file", "under_file")
        if not (c in ("fourier", "compare", "extract-activations") and w == "is_file")
    ],
)
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
        if (
            shutil.which("chattr")
            and subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode == 0
        ):
            immutable = True
    target = d
    if (
        writable()
    ):  # no way to protect a folder here: a path whose parent is a regular file is unwritable too
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
    assert_clean_error(
        husai(work, "train-model", "--p", "23", "--epochs", "2", "--out", "W/mine"), "already holds"
    )
    assert_clean_error(
        husai(work, "train-model", "--p", "23", "--epochs", "2", "--out", "W/mine", "--overwrite"),
        "thesis.tex",
    )
    assert_unchanged(before, work)


def test_resume_without_a_run(work):
    (work / "empty").mkdir()
    assert_clean_error(
        husai(work, "train-model", "--out", "W/empty", "--resume"), "nothing to resume"
    )


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


SAMPLE = [
    "p_huge",
    "sae_expansion_huge",
    "compare_threshold",
    "study_executor_bogus",
    "report_missing",
    "epochs_not_int",
]


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
