"""Shared fixtures. Models are trained once per session with a small p so the suite stays fast."""

import os

import pytest
import torch

# Every entry list handed to a compiled kernel is range-checked first (husai.sae.kernels.checking),
# here and in every subprocess a test starts: a wrong index fails a test instead of corrupting
# memory.
os.environ["HUSAI_KERNELS_CHECK"] = "1"

from husai.model.train import TrainConfig, train_model

# On 2 cores, one thread per process is faster for these small tensors and keeps
# concurrently running subprocess tests from oversubscribing the CPU.
torch.set_num_threads(1)
torch.set_flush_denormal(True)

GROKKED_P = 47  # the smallest p that groks in well under a minute with the default architecture


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A p=23 model trained for 100 epochs (not grokked): for file-format and error tests."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    m = train_model(
        TrainConfig(p=23, train_frac=0.6, epochs=100, eval_every=25, checkpoint_every=50),
        out,
        progress=False,
    )
    return out, m


@pytest.fixture(scope="session")
def grokked_run(tmp_path_factory):
    """A grokked p=47 model (test accuracy >= 99%, ~1000 epochs, ~20 s on one core)."""
    out = tmp_path_factory.mktemp("grokked") / "run"
    cfg = TrainConfig(
        p=GROKKED_P,
        train_frac=0.5,
        lr=3e-3,
        epochs=3000,
        eval_every=50,
        checkpoint_every=1000,
        stop_test_acc=0.995,
        stop_frac_single_freq=0.0,
    )
    m = train_model(cfg, out, progress=False)
    return out, m


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory):
    """study_harness.CONFIG run once: (config path, study folder, stdout, seconds its SAE stages
    took from start-up on: the wall time less the model's training)."""
    import json
    import time

    import yaml

    from study_harness import CONFIG, assert_one_cell_failed, study

    root = tmp_path_factory.mktemp("study")
    cfg = root / "study.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    t0 = time.time()
    r = study(cfg, root / "A")
    wall = time.time() - t0
    assert_one_cell_failed(r)
    assert (root / "A" / "report.html").is_file() and (root / "A" / "results.parquet").is_file()
    model = json.loads((root / "A" / "models" / "seed0" / "metrics.json").read_text())[
        "wall_seconds"
    ]
    return cfg, root / "A", r.stdout, wall - model


@pytest.fixture(scope="session")
def reference_training(tmp_path_factory):
    """test_faults.TRAIN run once, uninterrupted: (run folder, wall seconds with imports), what the
    killed and interrupted runs must end up equal to."""
    import subprocess
    import time

    from test_faults import ENV, HUSAI, TRAIN

    ref = tmp_path_factory.mktemp("reference") / "run"
    t0 = time.time()
    r = subprocess.run(HUSAI + TRAIN + ["--out", str(ref)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return ref, time.time() - t0
