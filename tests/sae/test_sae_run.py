"""`husai train-sae` / `husai extract-activations` end to end, and every kind of bad
input: one-line error, exit 2, nothing written to OUT."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from husai.io import save_tensors
from husai.sae.checkpoint import load_sae, load_saes

from sae_fixtures import tiny_model_dir

torch.set_num_threads(1)
FAST = ["--epochs", "2", "--expansion", "2", "--k", "4", "--batch-size", "128", "--quiet"]


def run_cli(monkeypatch, capsys, *args):
    from husai.cli import main

    monkeypatch.setattr(sys, "argv", ["husai", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_clean_failure(code, err, out_dir, match):
    assert code == 2, err
    assert (
        err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    )
    assert match in err, err
    assert not out_dir.exists()
    assert not [
        p for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}.")
    ]  # no staging left


def test_train_sae_multi_seed_layout_and_metrics(monkeypatch, capsys, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        monkeypatch,
        capsys,
        "train-sae",
        "--transformer-checkpoint",
        tiny_model_dir(),
        "--config",
        "configs/examples/topk_16x.yaml",
        "--layer",
        "0",
        "--seeds",
        "42,123",
        "--save-dir",
        out,
        *FAST,
    )
    assert code == 0, err
    assert "saved 2 SAE(s)" in stdout
    m = json.loads((out / "metrics.json").read_text())
    keys = {
        "mse",
        "explained_variance",
        "l0",
        "frac_dead",
        "frac_dense",
        "spliced_acc",
        "spliced_ce",
        "delta_ce",
        "ce_loss_recovered_zero",
        "ce_loss_recovered_mean",
        "cosine_to_init",
        "wall_seconds",
    }
    assert set(m["per_seed"]) == {"42", "123"} and keys <= set(m["per_seed"]["42"])
    assert m["per_seed"]["42"]["l0"] == pytest.approx(4.0)
    saes = load_saes(out)
    assert sorted(saes) == [42, 123]
    assert saes[42].cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert saes[42].cfg["metadata"]["seed"] == 42 and saes[42].W_enc.shape == (32, 64)


def test_the_sweep_axes_on_the_command_line(monkeypatch, capsys, tmp_path):
    """--latents sets d_sae itself (winning over --expansion) and --target-l0 runs the L0 search for
    relu, as the YAML keys do: the width in the saved SAE, the search's target and result in
    metrics.json."""
    out = tmp_path / "topk"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train-sae",
        "--transformer-checkpoint",
        tiny_model_dir(),
        "--save-dir",
        out,
        *FAST,
        "--latents",
        "20",
    )
    assert code == 0, err
    assert load_sae(out).W_enc.shape == (32, 20)
    out = tmp_path / "relu"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train-sae",
        "--transformer-checkpoint",
        tiny_model_dir(),
        "--save-dir",
        out,
        "--architecture",
        "relu",
        "--latents",
        "48",
        "--target-l0",
        "6",
        "--epochs",
        "2",
        "--batch-size",
        "128",
        "--quiet",
    )
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["calibration"]["target_l0"] == 6 and m["calibration"]["knob"] == "l1_coeff"
    assert load_sae(out).W_enc.shape == (32, 48)


@pytest.mark.parametrize(
    "args,match",
    [
        (["--latents", "0"], "config key 'latents' must be >= 1"),
        (["--latents", "4", "--k", "4"], "k must be smaller than d_sae = 4 (latents 4)"),
        (["--target-l0", "6"], "'target_l0' is for relu, jumprelu, not topk"),
        (["--architecture", "relu", "--target-l0", "-1"], "'target_l0' must lie"),
    ],
)
def test_the_sweep_axes_are_validated_as_the_yaml_keys(monkeypatch, capsys, tmp_path, args, match):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train-sae",
        "--transformer-checkpoint",
        tiny_model_dir(),
        "--save-dir",
        tmp_path / "out",
        "--epochs",
        "1",
        "--quiet",
        *args,
    )
    assert_clean_failure(code, err, tmp_path / "out", match)


def test_extract_then_train_from_activation_file_single_seed(monkeypatch, capsys, tmp_path):
    f = tmp_path / "acts.safetensors"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "extract-activations",
        "--transformer-checkpoint",
        tiny_model_dir(),
        "--hook",
        "blocks.0.mlp.hook_post",
        "--out",
        f,
    )
    assert code == 0, err
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train-sae",
        "--activations",
        f,
        "--seed",
        "7",
        "--save-dir",
        out,
        *FAST,
    )
    assert code == 0, err
    sae = load_sae(out)  # one seed: OUT itself is the SAELens folder
    assert sae.d_in == 64 and sae.cfg["metadata"]["seed"] == 7
    assert sae.cfg["metadata"]["hook_name"] == "blocks.0.mlp.hook_post"
    m = json.loads((out / "metrics.json").read_text())["per_seed"]["7"]
    assert m["spliced_ce"] is None and m["explained_variance"] is not None  # no model: spliced null


def test_train_sae_saves_the_trajectory(monkeypatch, capsys, tmp_path):
    """OUT/trajectory.safetensors: every seed, the init (epoch 0, as init_saes rebuilds it) and
    epoch 1 (default epochs [0, 1, 3]; 3 is beyond 2 epochs); the saved SAEs equal a run that
    records nothing."""
    from husai.io import load_tensors
    from husai.sae.activations import model_activations
    from husai.sae.config import config_from_dict
    from husai.sae.train import init_saes

    outs = {}
    for name, text in (
        ("traj", "architecture: topk\n"),
        ("plain", "architecture: topk\ntrajectory_epochs: []\n"),
    ):
        outs[name] = tmp_path / name
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            "train-sae",
            "--transformer-checkpoint",
            tiny_model_dir(),
            "--layer",
            "0",
            "--config",
            _write_cfg(tmp_path, text),
            "--seeds",
            "42,123",
            "--save-dir",
            outs[name],
            *FAST,
        )
        assert code == 0, err
    assert not (outs["plain"] / "trajectory.safetensors").exists()
    tensors, meta = load_tensors(outs["traj"] / "trajectory.safetensors")
    assert json.loads(meta["seeds"]) == [42, 123] and json.loads(meta["epochs"]) == [0, 1]
    assert set(tensors) == {f"{k}.epoch{e}" for k in ("W_dec", "W_enc_T", "live") for e in (0, 1)}
    assert tensors["W_dec.epoch1"].shape == tensors["W_enc_T.epoch0"].shape == (2, 64, 32)
    assert tensors["live.epoch1"].dtype == torch.uint8 and tensors["live.epoch0"].shape == (2, 64)
    assert bool(tensors["live.epoch0"].all())
    cfg = config_from_dict(json.loads((outs["traj"] / "metrics.json").read_text())["config"])
    acts, _ = model_activations(tiny_model_dir(), layer=0, split="all")
    assert torch.equal(tensors["W_dec.epoch0"], init_saes(acts, cfg, [42, 123]).W_dec)
    for seed in (42, 123):
        a, b = load_saes(outs["traj"])[seed], load_saes(outs["plain"])[seed]
        assert (
            torch.equal(a.W_dec, b.W_dec)
            and torch.equal(a.W_enc, b.W_enc)
            and torch.equal(a.b_dec, b.b_dec)
        )


def _write_cfg(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


BAD_CASES = {
    "unknown key": (
        lambda t: ["--config", _write_cfg(t, "architecture: topk\nlearning_rate: 0.1\n")],
        "'learning_rate'",
    ),
    "wrong type": (lambda t: ["--config", _write_cfg(t, "k: many\n")], "'k'"),
    "k too large": (lambda t: ["--k", "64", "--expansion", "2"], "k must be smaller than d_sae"),
    "k zero": (lambda t: ["--k", "0"], "k must be >= 1"),
    "bad hook": (lambda t: ["--hook", "blocks.0.hook_nope"], "valid hooks: hook_embed"),
    "bad layer": (lambda t: ["--layer", "3"], "out of range"),
    "missing model": (lambda t: ["--transformer-checkpoint", t / "nomodel"], "not found"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_with_model(monkeypatch, capsys, tmp_path, case):
    make, match = BAD_CASES[case]
    extra = make(tmp_path)
    args = ["train-sae", "--save-dir", tmp_path / "out", "--epochs", "1", "--quiet"]
    if "--transformer-checkpoint" not in extra:
        args += ["--transformer-checkpoint", tiny_model_dir()]
    code, _, err = run_cli(monkeypatch, capsys, *args, *extra)
    assert_clean_failure(code, err, tmp_path / "out", match)


def test_corrupt_model(monkeypatch, capsys, tmp_path):
    import shutil

    bad = tmp_path / "model"
    shutil.copytree(tiny_model_dir(), bad)
    (bad / "model.safetensors").write_bytes((bad / "model.safetensors").read_bytes()[:200])
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train-sae",
        "--transformer-checkpoint",
        bad,
        "--save-dir",
        tmp_path / "out",
        "--quiet",
    )
    assert_clean_failure(code, err, tmp_path / "out", "truncated or corrupt")


@pytest.mark.parametrize(
    "tensors,match",
    [
        ({"a": torch.tensor([[1.0, float("nan")], [0.0, 1.0]])}, "NaN or Inf"),
        ({"a": torch.tensor([[1.0, float("inf")], [0.0, 1.0]])}, "NaN or Inf"),
        ({"a": torch.ones(4, 2, 3)}, "2-D"),
        ({"a": torch.ones(4, 2), "b": torch.ones(4, 2)}, "exactly one tensor"),
    ],
)
def test_bad_activation_files(monkeypatch, capsys, tmp_path, tensors, match):
    f = tmp_path / "acts.safetensors"
    save_tensors(f, tensors)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train-sae",
        "--activations",
        f,
        "--save-dir",
        tmp_path / "out",
        "--quiet",
    )
    assert_clean_failure(code, err, tmp_path / "out", match)


def test_diverging_run_keeps_last_good_checkpoint(monkeypatch, capsys, tmp_path):
    from husai.sae.architectures import TopKSAE

    orig, calls = TopKSAE.training_loss, {"n": 0}

    def poisoned(self, x, dead):
        calls["n"] += 1
        return orig(self, x * float("nan") if calls["n"] == 6 else x, dead)

    monkeypatch.setattr(TopKSAE, "training_loss", poisoned)
    out = tmp_path / "out"  # 529 inputs / batch 128 = 5 steps per epoch: NaN at step index 5
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train-sae",
        "--transformer-checkpoint",
        tiny_model_dir(),
        "--save-dir",
        out,
        "--epochs",
        "3",
        "--batch-size",
        "128",
        "--quiet",
    )
    assert code == 2 and "NaN loss at step 5" in err and "epoch 1" in err
    m = json.loads((out / "metrics.json").read_text())
    assert m["diverged_at_step"] == 5 and len(m["history"]) == 1
    assert torch.isfinite(load_sae(out).W_dec).all()
