"""husai.timing's stage timer, and a real study cell's timing in analysis.json and the study's
timing.json."""

import json
import shutil
import time

import pytest

from husai.timing import stage, take, with_other

SLEEP = 0.05
"""Every block sleeps at least this long, so a block counted twice adds >= SLEEP to the sum."""
SLACK = SLEEP / 2
"""The wall time measured around the outermost stage exceeds the stages' sum only by a few
statements outside it; a double count would exceed this slack."""


def test_nested_stages_count_each_second_once():
    take()
    t0 = time.perf_counter()
    with stage("outer"):
        time.sleep(SLEEP)
        with stage("inner"):
            time.sleep(SLEEP)
            with stage("outer"):  # a name re-entered inside another stage is still innermost
                time.sleep(SLEEP)
        time.sleep(SLEEP)
    wall = time.perf_counter() - t0
    s = take()
    assert set(s) == {"outer", "inner"}
    assert s["outer"] >= 3 * SLEEP and s["inner"] >= SLEEP  # sleeps are lower bounds
    assert wall - SLACK <= sum(s.values()) <= wall
    assert take() == {}  # take() cleared them


def test_stages_accumulate_and_survive_an_exception():
    take()
    t0 = time.perf_counter()
    for _ in range(2):
        with stage("a"):
            time.sleep(SLEEP)
    with pytest.raises(ValueError):
        with stage("b"):
            with stage("c"):
                time.sleep(SLEEP)
                raise ValueError("stop")
    with stage("d"):  # at the top level again: nothing was left open by the exception
        time.sleep(SLEEP)
    wall = time.perf_counter() - t0
    s = take()
    assert set(s) == {"a", "b", "c", "d"} and s["a"] >= 2 * SLEEP and s["c"] >= SLEEP
    assert s["b"] < SLEEP  # its only time was c's
    assert wall - 2 * SLACK <= sum(s.values()) <= wall
    full = with_other(s, wall + 1.0)
    assert full["other"] == pytest.approx(wall + 1.0 - sum(s.values()))
    assert sum(full.values()) == pytest.approx(wall + 1.0)


def test_study_timing_sums_cells():
    from husai.study.runner import study_timing, timing_table

    cells = [
        dict(stages=dict(training=2.0, stability=1.0), other=1.0, wall_seconds=4.0),
        dict(stages=dict(training=1.0, l0_search=3.0), other=0.0, wall_seconds=4.0),
    ]
    s = study_timing(cells, "process", 2, wall=5.0, cells_wall=4.5)
    assert s["cells"] == 2 and s["cell_seconds"] == 8.0 and s["workers"] == 2
    assert list(s["stages"]) == ["training", "l0_search", "stability", "other"]
    assert [r["seconds"] for r in s["stages"].values()] == [3.0, 3.0, 1.0, 1.0]
    assert sum(r["share"] for r in s["stages"].values()) == pytest.approx(1.0)
    assert study_timing(cells, "local", 2, 5.0, 4.5)["workers"] == 1
    assert timing_table(s).row_count == 4


@pytest.mark.slow
def test_a_real_cell_records_its_stages(grokked_run, tmp_path):
    """A ReLU cell at a target L0 with the untrained control and the oracle: every stage it goes
    through is timed, and the stages sum to at most the cell's wall time."""
    import yaml

    from husai.study.config import parse_study
    from husai.study.runner import cell_spec, model_dir, run_cell

    cfg = parse_study(
        yaml.safe_load(
            """
            model: {preset: fast, p: 47, seeds: [0]}
            seeds: [1, 2, 3]
            saes: [{architecture: relu, expansion: 2, target_l0: 4, l1_coeff: 0.3, epochs: 2,
                    batch_size: 128}]
            stability: {controls: [untrained], control_seeds: 2}
            """
        )
    )
    out = tmp_path / "study"
    shutil.copytree(grokked_run[0], model_dir(out, 0))
    (run,) = cfg.runs()
    res = run_cell(cell_spec(run, out, cfg), threads=1)
    assert res["status"] == "ok", res
    t = json.loads((run.folder(out) / "analysis.json").read_text())["timing"]
    assert t == res["timing"]  # JSON keeps a float exactly
    for name in (
        "activations",
        "l0_search",
        "training",
        "writing",
        "stability",
        "ground_truth",
        "controls",
        "oracle_score",
        "oracle_training",
    ):
        assert t["stages"].get(name, 0) > 0, name
    assert "figures" not in t["stages"]  # a study cell draws no PNG: the report draws them all
    assert sum(t["stages"].values()) <= t["wall_seconds"]
    assert t["other"] == pytest.approx(t["wall_seconds"] - sum(t["stages"].values()))


@pytest.mark.slow
def test_the_study_writes_its_timing(finished_study):
    _, out, stdout, _ = finished_study
    s = json.loads((out / "timing.json").read_text())
    assert s["cells"] == 3 and s["executor"] == "local" and s["workers"] == 1
    assert s["cell_seconds"] <= s["cells_wall_seconds"] <= s["wall_seconds"]
    assert s["stages"]["training"]["seconds"] > 0 and "other" in s["stages"]
    assert "where the cells' time went" in stdout
    failed = json.loads(next(out.glob("saes/*/*/relu_x2_l1_0.1/failed.json")).read_text())
    assert failed["timing"]["stages"]["training"] > 0  # it diverged in training
