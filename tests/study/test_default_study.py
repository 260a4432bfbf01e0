"""`husai study` with no --config runs the study that ships inside the package
(husai/study/configs/), from a clone and from an installed wheel; `--plan` says what would run and
writes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from husai.study.config import SHIPPED, load_study, shipped_config

REPO = Path(__file__).resolve().parents[2]
HUSAI = [sys.executable, "-m", "husai.cli"]


def _plan(cmd: list[str], cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd + ["study", "--plan", "--out", "runs/x"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_shipped_studies_are_package_files_and_the_clone_links_them():
    for name, file in SHIPPED.items():
        path = shipped_config(name)
        assert path.is_file() and path.parent == REPO / "husai" / "study" / "configs"
        assert (
            REPO / "configs" / file
        ).resolve() == path  # configs/study.yaml in a clone is the same file
        assert load_study(name).raw == load_study(path).raw


def test_study_without_config_plans_the_default_from_any_folder(tmp_path):
    """From a folder that is not the clone: the default study is found (its 42 cells over three
    models), `--config full` is the full grid, and nothing is written (no runs/x, no lock file)."""
    r = _plan(HUSAI, tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"config: {shipped_config('default')}"
    assert "models: 3 (preset fast, seeds 0, 1, 2)" in lines[1]
    assert lines[3].startswith("SAE cells: 42 (relu, topk), 3 SAE seeds each; 0 already done")
    full = subprocess.run(
        HUSAI + ["study", "--plan", "--config", "full"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert full.returncode == 0 and "SAE cells: 1800 " in full.stdout
    assert list(tmp_path.iterdir()) == []


def test_help_names_a_default_that_exists():
    r = subprocess.run(
        HUSAI + ["study", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0 and "default" in r.stdout and "full" in r.stdout
    assert "[default: default]" in r.stdout and shipped_config("default").is_file()


def test_a_missing_config_path_is_one_line(tmp_path):
    r = subprocess.run(
        HUSAI + ["study", "--plan", "--config", "nope.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip() == "error: study config not found: nope.yaml"


@pytest.mark.slow
def test_an_installed_wheel_runs_the_default_study(tmp_path):
    """A wheel built from the sources, installed (without its dependencies, which this environment
    lends it) into a fresh venv: its `husai study --plan` finds the default study inside the
    installed package, and the kernels' C sources are installed with it."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "husai", src / "husai", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(src),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = dist.glob("husai-*.whl")
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300
    )
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    # the dependencies (torch, ...) from this environment, after the venv's own site-packages; no
    # .pth of this environment is read, so its editable husai stays out
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run(
        [py, "-c", "import husai; print(husai.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site)
    r = _plan([str(py), "-m", "husai.cli"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    installed = site / "husai" / "study" / "configs" / "study.yaml"
    assert r.stdout.splitlines()[0] == f"config: {installed}"
    assert "SAE cells: 42 " in r.stdout
    assert (site / "husai" / "sae" / "kernels.c").is_file() and (
        site / "husai" / "sae" / "kernels.h"
    ).is_file()
