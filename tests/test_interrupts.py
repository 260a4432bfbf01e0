"""Ctrl-C: SIGINT sent to a real command's whole process group, as a terminal's
Ctrl-C is, at random moments from interpreter start-up to the end of the run.

Every time: exit status 130, exactly one line on stderr (`interrupted: ...`) saying what was kept
and how to go on, no traceback (from the command or from any worker process it started), every
file on disk whole. Following the line's own advice then finishes the job with the same result as
an uninterrupted run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from study_harness import assert_one_cell_failed, reuse_model
from test_faults import ENV, HUSAI, TRAIN, check_tree


def interrupt(argv: list[str], delay: float) -> subprocess.CompletedProcess | None:
    """Run husai ARGV in its own process group and send SIGINT to the group after `delay` s.
    Returns the finished process, or None if it finished before the signal (or had finished its
    work when the signal came: exit 0). Waits until every process of the group (pool workers
    included) is gone."""
    # A terminal's Ctrl-C reaches a command whose SIGINT is at its default; a test suite started as
    # a shell's background job inherits SIGINT ignored, which husai (rightly) keeps, so reset it
    # here.
    proc = subprocess.Popen(
        HUSAI + argv,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        deadline = time.time() + 30
        while time.time() < deadline:  # no worker outlives the command
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(
                "processes of the interrupted command were still running 30 s later"
            )
        return (
            subprocess.CompletedProcess(argv, proc.returncode, out, err)
            if proc.returncode
            else None
        )
    proc.communicate()
    return None


def assert_one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 130, f"exit {r.returncode}: {r.stderr}"
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), r.stderr
    return lines[0]


@pytest.mark.slow
def test_train_model_interrupted_at_random_moments(reference_training, tmp_path):
    ref, full = reference_training

    out = tmp_path / "run"
    rng = random.Random(1010)
    argv = TRAIN + ["--out", str(out)]
    notes = []
    for _ in range(
        40
    ):  # bounded: a command that never stops on SIGINT must fail the test, not hang it
        if len(notes) == 5:
            break
        r = interrupt(argv, rng.uniform(0.05, 0.9 * full))
        if r is None:  # finished first: start over
            shutil.rmtree(out)
            argv = TRAIN + ["--out", str(out)]
            continue
        line = assert_one_line(r)
        notes.append(line)
        if out.exists():
            check_tree(out)
        # do what the line says
        if "--resume" in line:
            assert str(out) in line and (out / "config.json").is_file()
            argv = TRAIN + ["--out", str(out), "--resume"]
        elif "had finished" in line:  # stopped while printing the summary: the run is whole
            assert (out / "model.safetensors").read_bytes() == (
                ref / "model.safetensors"
            ).read_bytes()
            shutil.rmtree(out)
            argv = TRAIN + ["--out", str(out)]
        else:
            assert "run the same command again" in line or "still starting" in line, line
    assert len(notes) == 5, f"only {len(notes)} of 40 runs stopped on SIGINT"
    r = subprocess.run(HUSAI + argv, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert any("--resume" in n for n in notes), notes  # the schedule reached the training loop


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "process"])
def test_study_interrupted_at_random_moments(finished_study, tmp_path, executor):
    cfg, ref, _, full = finished_study  # full: seconds of its SAE stages, start-up included
    out = tmp_path / "out"
    argv = ["study", "--config", str(cfg), "--out", str(out), "--executor", executor]
    rng = random.Random(77 if executor == "local" else 78)
    hits = 0
    for _ in range(8):
        if hits == 2:
            break
        if (
            not out.exists()
        ):  # reuse the trained model: the SAE stages and the pool are what we interrupt
            reuse_model(ref, out)
        r = interrupt(argv, rng.uniform(0.05, 0.9 * full))
        if r is None:
            shutil.rmtree(out)
            continue
        hits += 1
        line = assert_one_line(r)
        # "had finished": the Ctrl-C landed after the study's own code returned (it exits 1 for its
        # failed cell)
        assert (
            "rerun the same command" in line or "still starting" in line or "had finished" in line
        ), line
        check_tree(out)
    assert hits == 2, "the study finished before it could be interrupted"
    r = subprocess.run(HUSAI + argv, env=ENV, capture_output=True, text=True)
    assert_one_cell_failed(r)
    check_tree(out)
    assert (out / "results.csv").read_text() == (ref / "results.csv").read_text()
    assert not list(out.rglob(".*partial*"))


@pytest.mark.slow
def test_interrupted_overwrite_leaves_the_earlier_output_whole(tiny_run, tmp_path):
    run, _ = tiny_run
    out = tmp_path / "sae"
    args = [
        "train-sae",
        "--transformer-checkpoint",
        str(run),
        "--save-dir",
        str(out),
        "--expansion",
        "4",
        "--k",
        "4",
        "--seeds",
        "1,2",
        "--epochs",
        "300",
        "--quiet",
    ]
    t0 = time.time()
    r = subprocess.run(HUSAI + args, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    full = time.time() - t0  # mostly training: interrupt the replacement late in it
    # A loaded machine can make the reference run slow and the replacement quick: a replacement that
    # finished first is a completed overwrite, so take the folder as it is now and interrupt
    # earlier.
    for fraction in (0.6, 0.45, 0.3):
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        r = interrupt(args + ["--overwrite"], fraction * full)
        if r is not None:
            break
    assert r is not None, "finished before every interrupt"
    line = assert_one_line(r)
    assert f"the earlier output in {out} is untouched" in line, line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_exit_after_an_interrupt_stays_one_line():
    """An import cut short by Ctrl-C can leave objects whose destructors fail at shutdown (seen:
    pyparsing under matplotlib, 'Exception ignored in ... Traceback'); after its one line the
    command's exit stays quiet."""
    code = """
import sys
import husai.cli as cli
import husai.model.train as tm

class HalfBuilt:
    def __del__(self):
        raise AttributeError("half-built")

cli.half_built = HalfBuilt()  # collected at interpreter shutdown

def cut_short(*args, **kwargs):
    raise KeyboardInterrupt

tm.train_model = cut_short
sys.argv = ["husai", "train-model", "--out", sys.argv[1]]
cli.main()
"""
    r = subprocess.run(
        [sys.executable, "-c", code, "unused-out"], env=ENV, capture_output=True, text=True
    )
    assert r.returncode == 130
    # train_model never armed its own note, so the CLI's fallback reads the folder: nothing there
    assert r.stderr.strip().splitlines() == [
        "interrupted: nothing was written to unused-out; run the same command again"
    ], r.stderr


def test_a_note_that_hands_over_falls_back_when_nothing_took_over():
    """on_interrupt(note -> None, fallback): an inner note wins; a Ctrl-C with no inner note (the
    hand-over window, seen once in CI) gets the fallback, never the generic line; without a fallback
    it passes on."""
    from husai.interrupts import Interrupted, on_interrupt

    def interrupted(inner: bool) -> BaseException:
        try:
            with on_interrupt(lambda: None, fallback=lambda: "from disk"):
                if inner:
                    with on_interrupt("inner note"):
                        raise KeyboardInterrupt
                raise KeyboardInterrupt
        except BaseException as e:
            return e

    assert isinstance(interrupted(True), Interrupted) and str(interrupted(True)) == "inner note"
    assert isinstance(interrupted(False), Interrupted) and str(interrupted(False)) == "from disk"
    try:
        with on_interrupt(lambda: None):
            raise KeyboardInterrupt
    except BaseException as e:
        assert type(e) is KeyboardInterrupt


def test_a_ctrl_c_cpython_saw_unhandled_still_exits_130(tmp_path):
    """CPython marks a KeyboardInterrupt that passed through top-level script code as unhandled (a
    global flag) and then, for `python -m`, ends the process by SIGINT at exit whatever status it
    was given: CI saw exit -2 after the one line. The flag is set here by hand, as the imports set
    it; the CLI clears it. (Run with -m, as the tests and the console script's runpy path do; -c
    exits early.)"""
    code = """
import ctypes, sys
import husai.cli as cli
import husai.model.train as tm

def cut_short(*args, **kwargs):
    ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 1
    raise KeyboardInterrupt

tm.train_model = cut_short
sys.argv = ["husai", "train-model", "--out", "unused-out"]
cli.main()
"""
    (tmp_path / "flagged_main.py").write_text(code)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(tmp_path), ENV.get("PYTHONPATH", "")])}
    r = subprocess.run(
        [sys.executable, "-m", "flagged_main"], env=env, capture_output=True, text=True
    )
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == [
        "interrupted: nothing was written to unused-out; run the same command again"
    ], r.stderr


def test_a_ctrl_c_swallowed_by_a_weakref_callback_is_raised_at_the_next_safe_point(monkeypatch):
    """The SIGINT handler raises in whatever Python code runs; inside a weakref callback CPython
    prints 'Exception ignored' and drops it (a study in CI ran to its end, exit 1 instead of 130).
    The handler also records it, and the study's cell loop raises it at the next cell
    (raise_if_interrupted)."""
    import weakref

    from husai import interrupts

    monkeypatch.setattr(interrupts, "_seen", False)
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    interrupts.raise_if_interrupted()  # nothing arrived: nothing raised

    class Thing:
        pass

    thing = Thing()
    ref = weakref.ref(thing, lambda r: interrupts._raise_interrupt(signal.SIGINT, None))
    del thing  # the callback runs here; its KeyboardInterrupt is swallowed
    assert ref() is None
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_interrupted()


def test_a_ctrl_c_after_the_command_returned_says_its_work_is_done(monkeypatch):
    """Outside every note, a Ctrl-C gets the generic line while the command runs, and FINISHED_NOTE
    once its callback has returned or exited on its own (click's and the CLI's exit path; seen in
    CI)."""
    from husai import interrupts

    monkeypatch.setattr(interrupts, "_finished", False)
    assert interrupts.finished_note("") == "" and interrupts.finished_note("a note") == "a note"

    def stopped():
        raise KeyboardInterrupt

    with pytest.raises(interrupts.CommandInterrupted):
        interrupts.interruptible(stopped)()
    assert interrupts.finished_note("") == ""
    assert interrupts.interruptible(lambda: 7)() == 7
    assert (
        interrupts.finished_note("") == interrupts.FINISHED_NOTE
        and interrupts.finished_note("x") == "x"
    )


def test_a_dropped_ctrl_c_prints_no_traceback_and_is_reported(capsys, monkeypatch):
    """CPython drops a KeyboardInterrupt raised in a weakref callback or __del__ and prints it
    through sys.unraisablehook as "Exception ignored ... Traceback": husai's hook keeps those quiet
    (the flag `_seen` remembers the Ctrl-C for raise_if_interrupted and the CLI's finished-command
    check) and passes every other unraisable exception to the default hook."""
    from husai import interrupts

    class Raises:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    monkeypatch.setattr(sys, "unraisablehook", interrupts._quiet_dropped_interrupt)
    Raises(
        KeyboardInterrupt()
    )  # dropped at once (refcount 0): CPython calls the hook with real arguments
    assert capsys.readouterr().err == ""
    Raises(ValueError("kept"))
    assert "ValueError: kept" in capsys.readouterr().err
    seen, finished = interrupts._seen, interrupts._finished
    try:
        interrupts._seen, interrupts._finished = True, False
        assert not interrupts.dropped_interrupt()  # still running: a safe point will raise it
        interrupts._finished = True
        assert interrupts.dropped_interrupt()
    finally:
        interrupts._seen, interrupts._finished = seen, finished


def test_a_ctrl_c_while_typer_builds_the_cli_says_nothing_was_written(tmp_path):
    """After `arm`, typer spends ~84 ms building the click command from husai's commands before any
    callback runs; a Ctrl-C there is a bare KeyboardInterrupt out of `app()` (seen in CI as the
    generic line). A real `husai` process, with typer's get_command made to be interrupted: exit 130
    and the line that says nothing was written and how to go on."""
    code = (
        "import sys, typer.main\n"
        "sys.argv = ['husai', 'train-model', '--out', sys.argv[1]]\n"
        "def interrupted(app): raise KeyboardInterrupt\n"
        "typer.main.get_command = interrupted\n"
        "import husai.cli\n"
        "husai.cli.main()\n"
    )
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-c", code, str(out)], env=ENV, capture_output=True, text=True, timeout=120
    )
    line = assert_one_line(r)
    assert line == "interrupted: nothing was written; run the same command again", line
    assert not out.exists()
