"""Faults: SIGKILL a real `husai train-model` and a real `husai study` at random
moments, many times. After every kill each file on disk is absent or whole (no torn JSON, JSONL,
safetensors, CSV, parquet, PNG), the only strays are hidden `.*.tmp` files that no reader picks
up, and the resumed run ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HUSAI = [sys.executable, "-m", "husai.cli"]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}  # bitwise determinism across runs
ENV.pop("HUSAI_DEBUG", None)


def is_stray_tmp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


def check_whole(path: Path) -> None:
    """Raise AssertionError unless `path` is a complete, valid file of its kind."""
    import pyarrow.parquet as pq
    from safetensors.torch import load_file

    from husai.io import load_tensors

    name = path.name
    if name.endswith(".safetensors"):
        load_file(str(path))  # the plain safetensors reader
        load_tensors(path)  # husai's: checksum of the tensor bytes too
    elif name.endswith(".jsonl"):
        for line in path.read_text().splitlines():
            assert isinstance(json.loads(line), dict), path
    elif name.endswith(".json"):
        json.loads(path.read_text())
    elif name.endswith((".yaml", ".yml")):
        yaml.safe_load(path.read_text())
    elif name.endswith(".csv"):
        rows = list(csv.reader(io.StringIO(path.read_text())))
        assert rows and all(len(r) == len(rows[0]) for r in rows), path
    elif name.endswith(".parquet"):
        pq.read_table(path)
    elif name.endswith(".png"):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[-12:-4] == b"\x00\x00\x00\x00IEND", (
            path
        )
    elif name.endswith(".js"):  # a browser cell file: its tag line, then one whole register call
        from husai.browse.page import FILE_TAG

        lines = path.read_text().splitlines()
        assert lines[0].startswith(FILE_TAG.split("{")[0]) and len(lines) == 2, path
        assert lines[1].startswith("HB.register(") and lines[1].endswith(");"), path
        json.loads(lines[1][lines[1].index(", ") + 2 : -2])
    elif name.endswith((".md", ".html")):
        text = path.read_text()
        assert text.strip(), path
        if name.endswith(".html"):
            assert text.rstrip().endswith("</html>"), path
    else:
        raise AssertionError(f"unexpected file {path}")


def check_tree(root: Path) -> list[Path]:
    """Every file under root is whole or a hidden temp file; returns the temp files found."""
    strays = []
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        if is_stray_tmp(p):
            strays.append(p)
            continue
        if any(part.startswith(".browser_data.partial-") for part in p.parts):
            continue  # the browser's cell files being staged: no page reads them; the next run
            # removes them (the study's end state is checked to hold no staging folder)
        # a hidden staging folder of train-sae (renamed into place when finished) may hold anything
        # whole
        try:
            check_whole(p)
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure is a torn file
            raise AssertionError(f"{p} is torn after SIGKILL: {type(e).__name__}: {e}") from None
    return strays


def run_and_kill(argv: list[str], delay: float) -> int | None:
    """Start the command, SIGKILL it after `delay` seconds. Returns its exit status if it finished
    first."""
    proc = subprocess.Popen(
        HUSAI + argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        rc = proc.wait(timeout=delay)
        return rc
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
    finally:
        if proc.stderr:
            proc.stderr.close()


# -------------------------------------------------------------------------------------- train-model

TRAIN = [
    "train-model",
    "--p",
    "23",
    "--epochs",
    "500",
    "--eval-every",
    "10",
    "--checkpoint-every",
    "20",
    "--run-all-epochs",
    "--train-frac",
    "0.6",
    "--seed",
    "3",
]


@pytest.mark.slow
def test_train_model_survives_random_sigkills(reference_training, tmp_path):
    ref, full = reference_training  # full: wall time of a whole run, imports included

    out = tmp_path / "killed"
    rng = random.Random(20240606)
    kills = 0
    for attempt in range(16):
        if kills == 8:
            break
        # kill anywhere from interpreter start-up to near the end of a whole run
        delay = rng.uniform(0.05, max(0.5, 0.9 * full))
        resume = (out / "config.json").is_file()
        rc = run_and_kill(TRAIN + ["--out", str(out)] + (["--resume"] if resume else []), delay)
        if rc is not None:  # finished before the kill: start over to get another kill in
            assert rc == 0
            shutil.rmtree(out)
            continue
        kills += 1
        if out.exists():
            strays = check_tree(out)
            for s in strays:  # no reader may pick a temp file up: not a checkpoint, not a run file
                assert not s.name.startswith(".epoch_") or s.parent.name == "checkpoints"
            # plant a stray temp file as a kill mid-write would leave one: the resume must ignore it
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            (out / "checkpoints" / f".epoch_999999.safetensors.{kills}.tmp").write_bytes(b"torn")
    assert kills == 8, "the run finished before it could be killed 8 times"

    resume = (out / "config.json").is_file()
    r = subprocess.run(
        HUSAI + TRAIN + ["--out", str(out)] + (["--resume"] if resume else []),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    check_tree(out)
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert (out / "best.safetensors").read_bytes() == (ref / "best.safetensors").read_bytes()
    strip = lambda rows: [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]  # noqa: E731
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    assert strip(read(out / "history.jsonl")) == strip(read(ref / "history.jsonl"))
    m_out, m_ref = (json.loads((d / "metrics.json").read_text()) for d in (out, ref))
    m_out.pop("wall_seconds"), m_ref.pop("wall_seconds")
    assert m_out == m_ref


def test_a_stray_temp_file_does_not_block_a_fresh_run(tmp_path):
    """A kill during the very first write leaves only `.config.json.*.tmp`: the same command must
    still start (it is not "a folder that already holds files")."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.abc123.tmp").write_text("{")
    r = subprocess.run(
        HUSAI
        + [
            "train-model",
            "--p",
            "23",
            "--epochs",
            "2",
            "--eval-every",
            "1",
            "--run-all-epochs",
            "--out",
            str(out),
        ],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    check_tree(out)


# -------------------------------------------------------------------------------------------- study

from study_harness import assert_one_cell_failed, reuse_model  # noqa: E402  the shared tiny study: one diverging cell


@pytest.mark.slow
def test_study_survives_random_sigkills(finished_study, tmp_path):
    import pyarrow.parquet as pq

    cfg, ref, _, full = (
        finished_study  # full: how long its SAE stages take, to spread the kills over them
    )
    out = tmp_path / "killed"
    reuse_model(ref, out)  # reuse the trained model: the SAE stages are what we kill
    argv = ["study", "--config", str(cfg), "--out", str(out)]
    rng = random.Random(7)
    kills = 0
    for _ in range(10):
        if kills == 4:
            break
        rc = run_and_kill(argv, rng.uniform(1.0, max(1.5, 0.9 * full)))
        if rc is not None:
            assert rc == 1  # finished; its diverging cell failed
            shutil.rmtree(out)
            reuse_model(ref, out)
            continue
        kills += 1
        check_tree(out)
        (out / f".results.csv.{kills}.tmp").write_text("torn,")  # as a kill mid-write leaves it
    assert kills == 4, "the study finished before it could be killed 4 times"
    r = subprocess.run(HUSAI + argv, env=ENV, capture_output=True, text=True)
    assert_one_cell_failed(r)
    check_tree(out)
    assert (out / "results.csv").read_text() == (ref / "results.csv").read_text()
    assert (
        pq.read_table(out / "results.parquet").to_pylist()
        == pq.read_table(ref / "results.parquet").to_pylist()
    )
    assert not list(out.rglob(".*partial*"))  # no staging folder left behind
