"""One writer per output folder (husai.locks): a second command on a folder in use is refused at
once with one line naming the holder, a real SIGKILL of the holder leaves no lock that blocks the
next run, and train-model and train-sae have the same guard."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from husai.errors import HusaiError
from husai.locks import exclusive, holder, lock_path

from study_harness import CONFIG

HUSAI = [sys.executable, "-m", "husai.cli"]

_HOLD = """
import sys, time
from husai.locks import exclusive
with exclusive(sys.argv[1], "husai test-holder", "--out"):
    print("held", flush=True)
    time.sleep(600)
"""


def _wait_for(cond, timeout=60.0):
    t0 = time.time()
    while not cond():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _holder_process(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _refused(r: subprocess.CompletedProcess, pid: int, command: str) -> None:
    """Exit 2, one line: the holder's command, pid, host and start time, and how to wait or stop
    it."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    line = lines[0]
    assert line.startswith("error: ") and "is in use by " + command in line
    assert (
        f"pid {pid} on {socket.gethostname()}" in line and "started 20" in line and " UTC" in line
    )
    assert f"kill {pid}" in line and "wait for it to finish" in line


def test_a_second_holder_is_refused_and_a_sigkill_frees_the_lock(tmp_path):
    folder = tmp_path / "out"
    proc = _holder_process(folder)
    try:
        info = holder(folder)
        assert info["pid"] == proc.pid and info["command"] == "husai test-holder"
        with pytest.raises(
            HusaiError, match=rf"--out {folder} is in use by husai test-holder \(pid {proc.pid} "
        ):
            with exclusive(folder, "husai study", "--out"):
                pass
    finally:
        _kill(proc)
    assert holder(folder)["pid"] == proc.pid  # the file stays, naming its last holder ...
    with exclusive(
        folder, "husai study", "--out"
    ):  # ... but the kernel dropped the lock with the process
        assert holder(folder)["pid"] == os.getpid()
    assert not folder.exists()  # the lock lives beside the folder, never inside it
    assert not lock_path(folder).exists()  # and goes when its holder lets go


def test_many_takers_never_hold_one_folder_together(tmp_path):
    """Eight processes take and release the lock of one folder 40 times each, each appending its pid
    to a file on taking and again on letting go: no two holds ever interleave (the file removed on
    release must not let two takers hold two different files)."""
    folder, log = tmp_path / "out", tmp_path / "log"
    code = f"""
import os, sys
from husai.errors import HusaiError
from husai.locks import exclusive
held = 0
while held < 40:
    try:
        with exclusive({str(folder)!r}, "t", "--out"):
            with open({str(log)!r}, "a") as f:
                print(os.getpid(), "in", file=f)
            with open({str(log)!r}, "a") as f:
                print(os.getpid(), "out", file=f)
        held += 1
    except HusaiError:
        pass
"""
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(8)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    lines = log.read_text().splitlines()
    assert len(lines) == 8 * 40 * 2
    for a, b in zip(lines[::2], lines[1::2]):
        assert a.endswith(" in") and b == a.replace(" in", " out")


def test_a_second_study_and_a_report_are_refused_while_a_study_runs(tmp_path):
    """A real `husai study` (the shared tiny config, training its model): a second `husai study` on
    the same --out and `husai report` on it exit 2 at once with the one line; after a SIGKILL of the
    first, the lock is free and the study resumes as usual (see also test_faults, which kills and
    resumes)."""
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "study"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(
        HUSAI + ["study", "--config", str(cfg), "--out", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(
            lambda: (holder(out) or {}).get("pid") == first.pid and (out / "study.yaml").is_file()
        )
        second = subprocess.run(
            HUSAI + ["study", "--config", str(cfg), "--out", str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        _refused(second, first.pid, "husai study")
        report = subprocess.run(
            HUSAI + ["report", str(out)], env=env, capture_output=True, text=True, timeout=120
        )
        _refused(report, first.pid, "husai study")
        assert first.poll() is None  # the refusals did not disturb the running study
    finally:
        _kill(first)
    with exclusive(out, "husai study", "--out"):
        pass


def test_train_model_and_train_sae_refuse_a_folder_in_use(tmp_path, tiny_run):
    run, _ = tiny_run
    for argv, flag in (
        (["train-model", "--p", "23", "--epochs", "10", "--out"], "--out"),
        (
            ["train-sae", "--transformer-checkpoint", str(run), "--epochs", "1", "--save-dir"],
            "--save-dir",
        ),
    ):
        folder = tmp_path / argv[0]
        proc = _holder_process(folder)
        try:
            r = subprocess.run(
                HUSAI + argv + [str(folder)], capture_output=True, text=True, timeout=120
            )
            _refused(r, proc.pid, "husai test-holder")
            assert f"{flag} {folder}" in r.stderr and not folder.exists()
        finally:
            _kill(proc)
        r = subprocess.run(
            HUSAI + argv + [str(folder)], capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
