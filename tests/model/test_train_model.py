"""Model training: run folder contents, stopping rule, exact resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from husai.errors import HusaiError
from husai.model.checkpoint import REQUIRED_FIELDS, load_model
from husai.model.train import PRESETS, TrainConfig, config_from_json, config_json, train_model

HUSAI = [sys.executable, "-m", "husai.cli"]
METRIC_KEYS = {
    "test_acc",
    "test_loss",
    "train_loss",
    "epochs_trained",
    "grokked_epoch",
    "key_frequencies",
    "frac_neurons_single_freq",
    "restricted_loss",
    "excluded_loss",
    "wall_seconds",
}


def run_cli(*args, **kw):
    env = {**os.environ, "HUSAI_DEBUG": ""}
    return subprocess.run(
        HUSAI + [str(a) for a in args], capture_output=True, text=True, env=env, **kw
    )


def assert_clean_error(r, *fragments):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_run_folder_has_everything(tiny_run):
    out, metrics = tiny_run
    for name in (
        "config.json",
        "model.safetensors",
        "best.safetensors",
        "metrics.json",
        "history.jsonl",
    ):
        assert (out / name).is_file(), name
    assert list((out / "checkpoints").glob("epoch_*.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    assert set(REQUIRED_FIELDS) <= set(cfg)
    assert cfg["stopping"]["stop_test_acc"] == 0.999 and "rule" in cfg["stopping"]
    assert cfg["training"]["lr"] > 0 and cfg["training"]["weight_decay"] == 1.0
    on_disk = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(on_disk)
    assert on_disk["epochs_trained"] == metrics["epochs_trained"]
    history = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == sorted(r["epoch"] for r in history)
    model, _ = load_model(out)
    assert model.cfg.p == cfg["p"]


def test_small_model_groks(grokked_run):
    out, m = grokked_run
    assert m["test_acc"] >= 0.99
    assert 1 <= len(m["key_frequencies"]) <= 8
    # Restricting the logits to the key frequencies keeps the model accurate (Nanda et al. 5.1);
    # removing them on the training set destroys it.
    assert m["restricted_loss"] < 0.5 < m["excluded_loss"]


def test_stopping_rule_needs_both_accuracy_and_clean_circuit(tmp_path):
    base = dict(p=23, train_frac=0.6, lr=3e-3, epochs=300, eval_every=50, checkpoint_every=100)
    # A single-frequency bar no model can reach: training runs to the epoch limit.
    m1 = train_model(
        TrainConfig(**base, stop_test_acc=0.0, stop_frac_single_freq=1.01),
        tmp_path / "a",
        progress=False,
    )
    assert m1["epochs_trained"] == 300 and m1["stopped_because"] == "max_epochs"
    # Both bars trivially met: stops at the first evaluation.
    m2 = train_model(
        TrainConfig(**base, stop_test_acc=0.0, stop_frac_single_freq=0.0),
        tmp_path / "b",
        progress=False,
    )
    assert m2["epochs_trained"] == 50 and m2["stopped_because"] == "grokked_and_clean"


def _all_files_valid(out: Path):
    for f in out.rglob("*"):
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".jsonl":
            [json.loads(l) for l in f.read_text().splitlines()]
        elif f.suffix == ".safetensors":
            load_file(f)
        elif f.is_file():
            raise AssertionError(f"unexpected file left behind: {f}")


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    args = [
        "train-model",
        "--p",
        23,
        "--train-frac",
        0.6,
        "--epochs",
        400,
        "--eval-every",
        20,
        "--checkpoint-every",
        60,
        "--run-all-epochs",
        "--threads",
        1,
    ]
    ref = run_cli(*args, "--out", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        HUSAI + [str(a) for a in args] + ["--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while (
        not (out / "checkpoints" / "epoch_000120.safetensors").exists() and time.time() < deadline
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists(), "killed too late to test resume"
    _all_files_valid(out)
    res = run_cli(*args, "--out", out, "--resume")
    assert res.returncode == 0, res.stderr
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha, hb = (
        [
            {k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
            for line in (run / "history.jsonl").read_text().splitlines()
        ]
        for run in (tmp_path / "ref", out)
    )
    assert ha == hb
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path / "ref", out))
    ma.pop("wall_seconds"), mb.pop("wall_seconds")
    assert ma == mb


# The fast preset's schedule fields, with a clean-up phase that starts at the first evaluation
# (epoch 10), before the checkpoint that the resume starts from.
SCHEDULE = dict(cleanup_weight_decay=3.0, cleanup_from_train_acc=0.0, cleanup_from_test_acc=0.0)


@pytest.mark.parametrize("extra", [{}, SCHEDULE], ids=["plain", "cleanup"])
def test_resume_restores_optimizer_state(tmp_path, extra):
    """Resuming with fresh AdamW moments (or the clean-up phase not yet started) would change the
    weights: prove the state is loaded."""
    cfg = dict(
        p=23,
        train_frac=0.6,
        epochs=40,
        eval_every=10,
        checkpoint_every=20,
        run_all_epochs=True,
        **extra,
    )
    train_model(TrainConfig(**cfg), tmp_path / "ref", progress=False)
    train_model(TrainConfig(**{**cfg, "epochs": 20}), tmp_path / "r", progress=False)
    cfg_json = json.loads((tmp_path / "r" / "config.json").read_text())
    cfg_json["training"]["epochs"] = 40
    (tmp_path / "r" / "config.json").write_text(json.dumps(cfg_json))
    train_model(TrainConfig(), tmp_path / "r", resume=True, progress=False)
    a, b = (
        load_file(tmp_path / "ref" / "model.safetensors"),
        load_file(tmp_path / "r" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    if extra:  # the schedule acts: without it the weights differ
        train_model(
            TrainConfig(**{k: v for k, v in cfg.items() if k not in extra}),
            tmp_path / "plain",
            progress=False,
        )
        c = load_file(tmp_path / "plain" / "model.safetensors")
        assert not all(torch.equal(a[k], c[k]) for k in a)


def test_new_training_fields_round_trip_through_config_json():
    cfg = TrainConfig(p=23, seed=3, split_seed=3, preset="fast", **{**PRESETS["fast"], **SCHEDULE})
    back = config_from_json(json.loads(json.dumps(config_json(cfg, "cpu"))))
    assert back == cfg
    for k in SCHEDULE:
        assert k in config_json(cfg, "cpu")["training"]


@pytest.mark.parametrize(
    "field, value", [("cleanup_weight_decay", -1.0), ("cleanup_weight_decay", float("nan"))]
)
def test_bad_schedule_fields(field, value):
    with pytest.raises(HusaiError, match=field.split("_")[0]):
        TrainConfig(**{field: value}).validate()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--p", 21], "prime"),
        (["--p", 2], "prime"),
        (["--train-frac", 1.0], "train fraction"),
        (["--train-frac", 0], "train fraction"),
        (["--preset", "turbo"], "unknown preset"),
        (["--epochs", -5], "epochs"),
    ],
)
def test_bad_training_input(tmp_path, args, fragment):
    r = run_cli("train-model", "--out", tmp_path / "o", "--p", 23, *args)
    assert_clean_error(r, fragment)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_out_dir_with_another_run_is_refused_and_kept(tiny_run, tmp_path):
    out, _ = tiny_run
    before = {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    r = run_cli("train-model", "--out", out, "--p", 23, "--epochs", 10)
    assert_clean_error(r, "--resume", "--overwrite")
    assert before == {f: f.read_bytes() for f in out.rglob("*") if f.is_file()}
    f = tmp_path / "afile"
    f.write_text("x")
    assert_clean_error(run_cli("train-model", "--out", f, "--p", 23, "--epochs", 10), "is a file")


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_corrupt_truncated_and_mismatched_checkpoints(tiny_run, tmp_path):
    out, _ = tiny_run
    truncated = _copy_run(out, tmp_path / "t")
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_clean_error(run_cli("analyze-model", truncated), "truncated or corrupt")

    garbage = _copy_run(out, tmp_path / "g")
    (garbage / "model.safetensors").write_bytes(b"\x00" * 64)
    assert_clean_error(run_cli("analyze-model", garbage), "truncated or corrupt")

    mismatch = _copy_run(out, tmp_path / "m")
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["d_mlp"] = 256
    (mismatch / "config.json").write_text(json.dumps(cfg))
    assert_clean_error(run_cli("analyze-model", mismatch), "shape")

    assert_clean_error(run_cli("analyze-model", tmp_path / "nope"), "not found")
    with pytest.raises(HusaiError, match="not found"):
        load_model(tmp_path / "nope")


def test_analyze_model_cli_updates_metrics(tiny_run, tmp_path):
    run = _copy_run(tiny_run[0], tmp_path / "a")
    (run / "metrics.json").unlink()
    r = run_cli("analyze-model", run)
    assert r.returncode == 0, r.stderr
    m = json.loads((run / "metrics.json").read_text())
    assert {
        "key_frequencies",
        "frac_neurons_single_freq",
        "restricted_loss",
        "embed_spectrum",
    } <= set(m)


def test_wandb_offline_logging(tmp_path):
    import importlib.util

    assert importlib.util.find_spec("wandb"), "wandb is part of the test install"
    os.environ.setdefault("WANDB_MODE", "offline")
    train_model(
        TrainConfig(p=23, train_frac=0.6, epochs=20, eval_every=10),
        tmp_path / "w",
        use_wandb=True,
        progress=False,
    )
    runs = list((tmp_path / "w" / "wandb").glob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb"))


def test_snapshots_give_the_progress_measures_with_the_final_key_frequencies(tmp_path):
    """Each progress row equals the measures computed by hand on that snapshot's weights; the last
    snapshot is the final model, so its row matches metrics.json's own restricted / excluded
    loss."""
    from husai.model.analyze import single_freq_fraction
    from husai.model.checkpoint import load_weights
    from husai.model.data import make_dataset
    from husai.model.fourier import restricted_excluded_loss
    from husai.model.transformer import Transformer

    cfg = TrainConfig(
        p=23, train_frac=0.6, epochs=40, eval_every=10, snapshot_every=10, run_all_epochs=True
    )
    m = train_model(cfg, tmp_path / "r", progress=False)
    snaps = sorted((tmp_path / "r" / "snapshots").glob("epoch_*.safetensors"))
    assert [s.name for s in snaps] == [f"epoch_{e:06d}.safetensors" for e in (10, 20, 30, 40)]
    assert [r["epoch"] for r in m["progress"]] == [10, 20, 30, 40]
    data = make_dataset(23, 0.6, 0)
    model = Transformer(cfg.model_config()).eval()
    for row, path in zip(m["progress"], snaps):
        load_weights(model, path)
        with torch.no_grad():
            want = restricted_excluded_loss(
                model(data.tokens), data.labels, data.train_idx, 23, m["key_frequencies"]
            )
        assert (row["restricted_loss"], row["excluded_loss"]) == pytest.approx(want)
        assert row["frac_neurons_single_freq"] == pytest.approx(single_freq_fraction(model, data))
    assert m["progress"][-1]["restricted_loss"] == pytest.approx(m["restricted_loss"])
    assert m["progress"][-1]["excluded_loss"] == pytest.approx(m["excluded_loss"])
    assert m["progress"][0]["test_loss"] != m["progress"][-1]["test_loss"]
    assert "progress" not in train_model(
        TrainConfig(p=23, train_frac=0.6, epochs=10, eval_every=10),
        tmp_path / "none",
        progress=False,
    )
    assert config_from_json(config_json(cfg, "cpu")).snapshot_every == 10
