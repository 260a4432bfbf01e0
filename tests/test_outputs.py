"""Nothing on disk is ever lost: every command that writes, against every kind of path.

One table: for each writing command (its output path O, file or folder) and each case,
    absent        O does not exist                              -> written, exit 0
    empty         O is an empty folder                          -> written (a folder output),
                                                                   refused (a file output)
    earlier       O holds the same command's earlier output     -> refused; with --overwrite
                                                                   replaced whole
                                                                   (the study resumes instead)
    other_husai   O holds another kind of husai output          -> refused, with --overwrite too
    user_files    O holds a user's file                         -> refused, with --overwrite too
    mixed         O holds an earlier output plus a user's file  -> --overwrite refused
                                                                   (a study resumes, keeping it)
    inside_input  O is, or lies inside, one of the command's inputs -> refused
and in every case every file that was on disk before is still there, byte for byte (the work
folder's snapshot), except, where the command succeeded, the files under O that it wrote.
Also: zero-variance activations, missing metrics, file modes under a umask, the study's exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from cli_harness import assert_clean_error, husai, pristine, snapshot, work  # noqa: F401

STUDY = {
    "model": {"p": 23, "epochs": 2, "eval_every": 1},
    "seeds": [1, 2],
    "saes": [{"architecture": "topk", "expansion": 2, "k": 4, "epochs": 1, "batch_size": 128}],
    "stability": {"threshold": 0.7},
}


@dataclass
class Writer:
    args: Callable[[str], list[str]]
    """The command line, given its output path O."""
    folder: bool
    """Is O a folder (else a file)?"""
    other: Callable[[Path, Path], None]
    """Put another kind of husai output at O (work folder, O)."""
    inside_input: str | None
    """An output path inside (or equal to) one of the command's inputs."""
    resumes: bool = False
    """A rerun on its own output continues it (the study) instead of needing --overwrite."""


def _copy_tree(rel: str):
    return lambda w, o: shutil.copytree(w / rel, o)


def _copy_file(rel: str):
    return lambda w, o: shutil.copy(w / rel, o)


def _compare_json(w: Path, o: Path) -> None:
    o.write_text(json.dumps({"saes": [], "stability": {}}))  # what `husai compare --json` writes


SAE_ARGS = ["--epochs", "1", "--expansion", "2", "--k", "4", "--quiet"]
WRITERS = {
    "train-model": Writer(
        lambda o: ["train-model", "--p", "23", "--epochs", "2", "--eval-every", "1", "--out", o],
        True,
        _copy_tree("sae"),
        None,
    ),
    "train-sae": Writer(
        lambda o: ["train-sae", "--transformer-checkpoint", "W/run", "--save-dir", o, *SAE_ARGS],
        True,
        _copy_tree("run"),
        "W/run/sae",
    ),
    "train-sae-activations": Writer(
        lambda o: ["train-sae", "--activations", "W/acts.safetensors", "--save-dir", o, *SAE_ARGS],
        True,
        _copy_tree("run"),
        "W/acts.safetensors",
    ),
    "extract-activations": Writer(
        lambda o: ["extract-activations", "--transformer-checkpoint", "W/run", "--out", o],
        False,
        _compare_json,
        "W/run/acts.safetensors",
    ),
    "ground-truth": Writer(
        lambda o: ["ground-truth", "W/run", "--json", o], False, _compare_json, "W/run/gt.json"
    ),
    "fourier": Writer(
        lambda o: ["fourier", "W/sae", "--model", "W/run", "--n-null", "1", "--json", o],
        False,
        _compare_json,
        "W/sae/fourier.json",
    ),
    "recover": Writer(
        lambda o: [
            "recover",
            "W/sae",
            "--activations",
            "W/acts.safetensors",
            "--ground-truth",
            "W/gt.safetensors",
            "--json",
            o,
        ],
        False,
        _compare_json,
        "W/sae/recover.json",
    ),
    "compare": Writer(
        lambda o: ["compare", "W/sae", "--json", o],
        False,
        _copy_file("acts.safetensors"),
        "W/sae/seed_1/compare.json",
    ),
    "compare-plots": Writer(
        lambda o: ["compare", "W/sae", "--json", o + ".json", "--plots", o],
        True,
        _copy_tree("sae"),
        "W/sae/plots",
    ),
    "study": Writer(
        lambda o: ["study", "--config", "W/ok.yaml", "--out", o],
        True,
        _copy_tree("run"),
        "W/ok.yaml",
        resumes=True,
    ),
}
CASES = ("absent", "empty", "earlier", "other_husai", "user_files", "mixed", "inside_input")
# a file output cannot hold a user's file beside its own; train-model reads no input
TABLE = [
    (c, k)
    for c, w in WRITERS.items()
    for k in CASES
    if not (k == "mixed" and not w.folder) and not (k == "inside_input" and w.inside_input is None)
]
# what a resumed study rewrites (atomically, file by file): its table and report
REPORT = (
    "out/results.csv",
    "out/results.parquet",
    "out/report.md",
    "out/report.html",
    "out/figures/",
    "out/browser.html",
)


def _changed(before: dict, after: dict, allowed: tuple[str, ...]) -> list[str]:
    """Files of `before` that changed or vanished, other than those under the `allowed` prefixes."""
    return [k for k, h in before.items() if after.get(k) != h and not k.startswith(allowed)]


def _run(work, writer: Writer, out: str, *extra):
    return husai(work, *writer.args(out), *extra)


def _ok(r) -> None:
    assert r.returncode == 0, (
        f"exit {r.returncode}\nstdout: {r.stdout[-2000:]}\nstderr: {r.stderr[-2000:]}"
    )
    assert "Traceback" not in r.stderr


def _refused_both_ways(work, writer: Writer, out: str, match: str) -> None:
    """Refused, and with --overwrite too (where the command has it); every file byte-identical."""
    before = snapshot(work)
    for extra in ([],) if writer.resumes else ([], ["--overwrite"]):
        assert_clean_error(_run(work, writer, out, *extra), match)
        assert snapshot(work) == before


@pytest.mark.slow
@pytest.mark.parametrize("cmd, case", TABLE)
def test_output_guard(work, cmd, case):
    w = WRITERS[cmd]
    (work / "ok.yaml").write_text(yaml.safe_dump(STUDY))
    out, o = "W/out", work / "out"
    if case == "absent":
        before = snapshot(work)
        _ok(_run(work, w, out))
        assert o.is_dir() == w.folder and o.exists()
        assert not _changed(before, snapshot(work), ("out",))
    elif case == "empty":
        o.mkdir()
        before = snapshot(work)
        r = _run(work, w, out)
        if w.folder:
            _ok(r)
            assert any(o.iterdir())
        else:
            assert_clean_error(r, "is a folder")
            assert snapshot(work) == before and not any(o.iterdir())
    elif case == "earlier":
        _ok(_run(work, w, out))
        before = snapshot(work)
        if w.resumes:  # the same command again continues (here: finds everything done)
            _ok(_run(work, w, out))
            assert not _changed(before, snapshot(work), REPORT)
            return
        assert_clean_error(_run(work, w, out), "--overwrite")
        assert snapshot(work) == before
        _ok(_run(work, w, out, "--overwrite"))
        after = snapshot(work)
        assert not _changed(before, after, ("out",))
        mine = lambda snap: sorted(k for k in snap if k == "out" or k.startswith("out/"))  # noqa: E731
        assert mine(after) == mine(before)  # replaced whole: the same files, nothing left over
        assert not [p for p in work.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    elif case == "other_husai":
        w.other(work, o)
        _refused_both_ways(work, w, out, "husai")
    elif case == "user_files":
        if w.folder:
            o.mkdir()
            (o / "thesis.tex").write_text("years of work\n")
        else:
            o.write_text("years of work\n")
        _refused_both_ways(work, w, out, "did not write")
    elif case == "mixed":
        _ok(_run(work, w, out))
        deep = sorted(p for p in o.rglob("*") if p.is_dir())
        for d in [o] + deep[:1]:  # a user's file at the top and one folder down
            (d / "notes.txt").write_text("mine\n")
        before = snapshot(work)
        if w.resumes:  # resuming deletes nothing: the user's files stay, and all but the report
            _ok(_run(work, w, out))
            after = snapshot(work)
            assert not _changed(before, after, REPORT)
            notes = [k for k in before if k.endswith("notes.txt")]
            assert len(notes) == 2 and all(after.get(k) == before[k] for k in notes)
            return
        assert_clean_error(_run(work, w, out, "--overwrite"), "never deletes")
        assert snapshot(work) == before
    elif case == "inside_input":
        before = snapshot(work)
        r = _run(work, w, w.inside_input)
        assert_clean_error(r, "what it reads")
        assert snapshot(work) == before


def test_compare_refuses_to_write_into_the_model_its_saes_record(work):
    """The model compare reads by default (the SAEs' metadata.model_path) is an input too."""
    for cfg in (work / "sae").glob("seed_*/cfg.json"):  # as if trained on W/run
        d = json.loads(cfg.read_text())
        d["metadata"]["model_path"] = str(work / "run")
        cfg.write_text(json.dumps(d))
    before = snapshot(work)
    assert_clean_error(husai(work, "compare", "W/sae", "--json", "W/run/cmp.json"), "what it reads")
    assert snapshot(work) == before


def test_a_study_run_on_its_own_config_folder_keeps_the_users_yaml(work):
    """`husai study --config exp/study.yaml --out exp`: the user's config (comments and all) is the
    study's study.yaml and stays byte for byte as written."""
    (work / "exp").mkdir()
    mine = "# my grid, with my notes\n" + yaml.safe_dump(STUDY)
    (work / "exp" / "study.yaml").write_text(mine)
    _ok(husai(work, "study", "--config", "W/exp/study.yaml", "--out", "W/exp"))
    assert (work / "exp" / "study.yaml").read_text() == mine and (
        work / "exp" / "report.html"
    ).is_file()


# -------------------------------------------------------------------------------- no information in


def test_zero_variance_activations_are_refused(work):
    from husai.sae.activations import save_activations

    save_activations(
        work / "const.safetensors", torch.full((200, 8), 3.25), {"hook_name": "constant"}
    )
    before = snapshot(work)
    r = husai(
        work, "train-sae", "--activations", "W/const.safetensors", "--save-dir", "W/o", *SAE_ARGS
    )
    assert_clean_error(r, "zero variance")
    assert snapshot(work) == before and not (work / "o").exists()


def test_train_saes_refuses_constant_data_but_not_a_constant_column():
    from husai.errors import HusaiError
    from husai.sae.config import SAETrainConfig
    from husai.sae.train import train_saes

    cfg = SAETrainConfig(architecture="topk", expansion=2, k=2, epochs=1, batch_size=64)
    with pytest.raises(HusaiError, match="zero variance"):
        train_saes(torch.ones(100, 4), cfg, [0])
    x = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    x[:, 2] = 7.0  # one dead dimension is information elsewhere, not none
    assert train_saes(x, cfg, [0]).steps == 2


# --------------------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_written_files_follow_the_umask(work, mask):
    """Every file and folder a command writes gets what a plain open()/mkdir would under the user's
    umask (temp files are created 0600 and staging folders 0700, so this must be set on purpose)."""
    old = os.umask(mask)
    try:
        r = husai(
            work,
            "train-sae",
            "--transformer-checkpoint",
            "W/run",
            "--save-dir",
            "W/o",
            "--seeds",
            "1,2",
            *SAE_ARGS,
        )
        r2 = husai(work, "compare", "W/o", "--json", "W/cmp.json", "--plots", "W/plots")
    finally:
        os.umask(old)
    _ok(r), _ok(r2)
    written = [work / "o", work / "cmp.json", work / "plots"]
    written += [p for d in (work / "o", work / "plots") for p in d.rglob("*")]
    assert len(written) > 8
    for p in written:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(p.stat().st_mode) == want, (
            f"{p}: {oct(stat.S_IMODE(p.stat().st_mode))} != {oct(want)}"
        )


# ----------------------------------------------------------------------------------------- the swap


def _tree(d: Path) -> dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in d.rglob("*") if p.is_file()}


@pytest.mark.parametrize("atomic", [True, False])
def test_staged_replacement_swaps_whole_folders(tmp_path, monkeypatch, atomic):
    """The new output replaces the old one only when complete, by renameat2(RENAME_EXCHANGE) or,
    where the kernel lacks it, by the three-rename fallback; a failure inside leaves the old
    whole."""
    import husai.outputs as outputs

    if not atomic:  # a C library without renameat2
        monkeypatch.setattr(
            outputs.ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(OSError("no libc"))
        )
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("old a")
    (out / "sub" / "b.txt").write_text("old b")
    old = _tree(out)
    with pytest.raises(RuntimeError):
        with outputs.staged_folder(out, "--out") as stage:
            (stage / "a.txt").write_text("half-written new")
            raise RuntimeError("the command failed")
    assert _tree(out) == old and [p.name for p in tmp_path.iterdir()] == ["out"]
    with outputs.staged_folder(out, "--out") as stage:
        (stage / "new.txt").write_text("new")
        assert _tree(out) == old  # nothing visible until the block ends
    assert _tree(out) == {"new.txt": b"new"} and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_kill_inside_the_fallback_swap_is_put_back(tmp_path):
    """The fallback parks the old output as .NAME.old-XXXX/NAME for an instant; if a kill lands
    there, the next claim of the path puts it back before looking at it."""
    from husai.outputs import SAE_OUTPUT, claim_folder

    parked = tmp_path / ".sae.old-abc123" / "sae"
    parked.mkdir(parents=True)
    (parked / "metrics.json").write_text("{}")
    (parked / "cfg.json").write_text("{}")
    with pytest.raises(Exception, match="--overwrite"):
        claim_folder(tmp_path / "sae", SAE_OUTPUT, "--save-dir")
    assert (tmp_path / "sae" / "metrics.json").read_text() == "{}" and not parked.parent.exists()


def test_a_path_taken_while_the_command_ran_is_left_alone(tmp_path):
    """The claim saw nothing at `out`; something appeared there before the new output was ready:
    it stays, byte for byte, and the command fails instead."""
    from husai.errors import HusaiError
    from husai.outputs import staged_folder

    out = tmp_path / "out"
    with pytest.raises(HusaiError, match="taken by something else"):
        with staged_folder(out, "--out") as stage:
            (stage / "new.txt").write_text("new")
            out.mkdir()
            (out / "theirs.txt").write_text("someone else's")
    assert _tree(out) == {"theirs.txt": b"someone else's"} and [
        p.name for p in tmp_path.iterdir()
    ] == ["out"]
