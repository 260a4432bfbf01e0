"""husai doctor (husai.study.doctor, its command husai.cli.doctor): five checks with figures,
troubleshooting hints, exit code 0 only on 5/5, and a check whose input failed skipped."""

import subprocess
import sys

import pytest
import torch

from husai import resources
from husai.errors import HusaiError
from husai.study import doctor


def test_doctor_passes_on_a_grokked_model(grokked_run):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "husai.cli",
            "doctor",
            "--transformer-checkpoint",
            str(grokked_run[0]),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "5/5 checks passed" in out and "torch" in out and "threads" in out
    for figure in (
        "parameters",
        "test accuracy",
        "shape [2209, 128]",
        "L0 32.0 (k = 32)",
        "explained variance",
        "Fourier overlap",
        "key-frequency subspaces",
        "max weight difference 0.00e+00",
    ):
        assert figure in out, figure
    assert out.count("PASS") == 5


def test_doctor_flags_an_ungrokked_model_and_says_what_to_try(tiny_run, tmp_path):
    lines = []
    checks = doctor.run_doctor(tiny_run[0], tmp_path, lines.append)
    assert not checks[0].passed
    # an ungrokked model is still a model: the later checks run on it and say what they see
    assert [c.skipped for c in checks] == [False] * 5
    assert checks[1].passed and "error" not in checks[2].figures
    text = "\n".join(lines)
    assert "model not grokked" in text and "--preset fast" in text and "/5 checks passed" in text
    r = subprocess.run(
        [sys.executable, "-m", "husai.cli", "doctor", "--transformer-checkpoint", str(tiny_run[0])],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_out_of_memory_is_a_failed_check_with_the_batch_size_hint(
    grokked_run, tmp_path, monkeypatch
):
    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(doctor, "train_saes", oom)
    lines = []
    checks = doctor.run_doctor(grokked_run[0], tmp_path, lines.append)
    assert [c.passed for c in checks[:3]] == [True, True, False]
    assert "--batch-size" in "\n".join(lines)
    for check in checks[3:]:
        assert check.figures == "skipped: needs train TopK SAE (1 epoch), which failed", check.name


def test_a_check_whose_input_failed_is_skipped_naming_it(grokked_run, tmp_path, monkeypatch):
    """Extraction fails: the SAE, Fourier and save/load checks take its activations, so none runs
    (the old rule ran the SAE check anyway, which failed with `error: 'acts'`)."""

    def broken(*a, **k):
        raise HusaiError("hook blocks.0.hook_resid_post not found")

    monkeypatch.setattr(doctor, "model_activations", broken)
    monkeypatch.setattr(doctor, "train_saes", lambda *a, **k: pytest.fail("SAE training ran"))
    lines = []
    checks = doctor.run_doctor(grokked_run[0], tmp_path, lines.append)
    assert [c.passed for c in checks] == [True, False, False, False, False]
    assert [c.skipped for c in checks] == [False, False, True, True, True]
    assert checks[1].figures == "error: hook blocks.0.hook_resid_post not found"
    for check in checks[2:]:
        assert check.figures == "skipped: needs extract activations, which failed", check.name
    assert "'acts'" not in "\n".join(lines) and lines[-1] == "1/5 checks passed"


def test_the_command_exits_non_zero_when_a_check_is_skipped(grokked_run, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from husai.cli import app

    def broken(*a, **k):
        raise HusaiError("no such hook")

    monkeypatch.setattr(doctor, "model_activations", broken)
    r = CliRunner().invoke(app, ["doctor", "--transformer-checkpoint", str(grokked_run[0])])
    assert r.exit_code == 1, r.output
    assert "[3/5] train TopK SAE (1 epoch)   FAIL  skipped: needs extract activations" in r.output
    assert "1/5 checks passed" in r.output


def test_troubleshooting_rules():
    assert doctor.model_hints(0.5) and "longer" in doctor.model_hints(0.5)[0]
    assert doctor.model_hints(0.999, 0.9) == []
    assert "clean" in doctor.model_hints(0.999, 0.2)[0]
    assert "TopK configuration" in doctor.sae_hints("topk", 32, 3.0, 0.0)[0]
    assert doctor.sae_hints("topk", 32, 32.0, 0.0) == []
    assert doctor.sae_hints("relu", None, 900.0, 0.0) == []  # L0 vs k only applies to TopK
    dead = doctor.sae_hints("topk", 32, 32.0, 0.45)
    assert len(dead) == 1 and "AuxK" in dead[0] and "--lr" in dead[0]
    assert (
        "verify the model grokked" in doctor.sae_hints("topk", None, 0, 0, fourier_overlap=0.05)[0]
    )
    # sparse latents are impure by construction: no hint when the decoder weights carry the
    # structure
    assert doctor.sae_hints("topk", None, 0, 0, fourier_overlap=0.05, key_weight_frac=0.8) == []
    assert doctor.sae_hints("topk", None, 0, 0, fourier_overlap=0.05, key_weight_frac=0.2)
    assert "--batch-size" in resources.oom_hint()
