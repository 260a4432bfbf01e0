"""An invalid study config is refused before any work starts, with the key named."""

import subprocess
import sys

import pytest
import yaml

from husai.errors import HusaiError
from husai.study.config import parse_study

GOOD = {
    "model": {"preset": "fast", "seeds": [0]},
    "seeds": [1, 2],
    "saes": [
        {"architecture": "topk", "expansion": [4, 8], "k": [4, 8]},
        {"architecture": "relu", "l1_coeff": 0.01},
    ],
}


def test_grid_expands_to_named_runs():
    cfg = parse_study(GOOD)
    names = sorted(r.name for r in cfg.runs())
    assert names == ["relu_x16_l1_0.01", "topk_x4_k4", "topk_x4_k8", "topk_x8_k4", "topk_x8_k8"]
    assert all(r.seeds == [1, 2] and r.hook == "blocks.0.hook_resid_post" for r in cfg.runs())


def test_width_in_latents_and_a_target_l0_name_their_cells():
    cfg = parse_study(
        dict(
            GOOD,
            saes=[
                {"architecture": "topk", "latents": [32, 512], "k": 4},
                {"architecture": "relu", "latents": 64, "target_l0": [4, 16]},
            ],
        )
    )
    assert sorted(r.name for r in cfg.runs()) == [
        "relu_n64_targetL0_16",
        "relu_n64_targetL0_4",
        "topk_n32_k4",
        "topk_n512_k4",
    ]
    assert {r.cfg.d_sae(512) for r in cfg.runs()} == {32, 512, 64}  # whatever the hook's d_in


def test_control_cells_pick_the_cells_that_run_the_controls():
    d = dict(
        GOOD,
        hooks=["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"],
        stability={
            "controls": ["memorised"],
            "control_cells": [
                {"architecture": "topk", "expansion": 8, "k": 4, "hook": "blocks.0.hook_resid_post"}
            ],
        },
    )
    cfg = parse_study(d)
    picked = [(r.name, r.hook) for r in cfg.runs() if cfg.has_controls(r)]
    assert picked == [("topk_x8_k4", "blocks.0.hook_resid_post")]
    every = parse_study(dict(GOOD, stability={"controls": ["memorised"]}))
    assert all(every.has_controls(r) for r in every.runs())
    assert not any(
        parse_study(GOOD).has_controls(r) for r in parse_study(GOOD).runs()
    )  # no controls asked


@pytest.mark.parametrize(
    "patch, fragment",
    [
        (
            {"stability": {"controls": ["memorised"], "control_cells": [{"colour": 1}]}},
            "control_cells",
        ),
        ({"stability": {"controls": ["memorised"], "control_cells": {"k": 4}}}, "control_cells"),
        ({"saes": [{"architecture": "topk", "latents": 0}]}, "'latents'"),
        ({"saes": [{"architecture": "topk", "target_l0": 8}]}, "target_l0"),
        ({"bogus": 1}, "'bogus'"),
        ({"seeds": []}, "'seeds'"),
        ({"seeds": [1, "two"]}, "'seeds'"),
        ({"seeds": [1.5]}, "'seeds'"),
        ({"saes": []}, "'saes'"),
        ({"saes": [{"architecture": "topk", "expansion": 0}]}, "'expansion'"),
        ({"saes": [{"architecture": "topk", "expansion": -2}]}, "'expansion'"),
        ({"saes": [{"architecture": "topk", "k": []}]}, "k"),
        ({"saes": [{"architecture": "topk", "kk": 3}]}, "'kk'"),
        ({"saes": [{"architecture": "topk", "expansion": "big"}]}, "'expansion'"),
        ({"model": {"preset": "turbo"}}, "model.preset"),
        ({"model": {"seeds": ["a"]}}, "model.seeds"),
        ({"model": {"colour": 1}}, "model.colour"),
        ({"hooks": []}, "'hooks'"),
        ({"stability": {"threshold": 2}}, "stability.threshold"),
        ({"stability": {"null_pairs": 10}}, "stability.null_pairs' is gone"),
        ({"stability": {"controls": ["trained"]}}, "stability.controls"),
        ({"stability": {"controls": ["untrained", "untrained"]}}, "stability.controls"),
        ({"stability": {"controls": "untrained"}}, "stability.controls"),
        (
            {"stability": {"controls": ["untrained"], "control_seeds": 3}},
            "stability.control_seeds",
        ),  # 2 SAE seeds
        ({"stability": {"controls": ["untrained"], "control_seeds": 1}}, "stability.control_seeds"),
        ({"stability": {"colour": 1}}, "'stability' takes only"),
        ({"oracle": {"started": "yes"}}, "'oracle' takes only score, encoder, started, cells"),
        ({"oracle": {"frozen": True}}, "'oracle' takes only"),
        ({"oracle": [True]}, "'oracle' takes only"),
    ],
)
def test_invalid_config_names_the_key(patch, fragment):
    with pytest.raises(HusaiError) as e:
        parse_study({**GOOD, **patch})
    assert fragment in str(e.value)


def test_the_oracle_runs_by_default_and_each_part_can_be_turned_off():
    assert parse_study(GOOD).oracle == dict(score=True, encoder=True, started=True)
    assert parse_study(dict(GOOD, oracle={"started": False})).oracle == dict(
        score=True, encoder=True, started=False
    )


def test_oracle_cells_pick_the_cells_that_train_the_oracle():
    """oracle.cells limits the two extra trainings (encoder, started); the score runs everywhere."""
    cfg = parse_study(dict(GOOD, oracle={"cells": [{"architecture": "topk", "k": 8}]}))
    switches = {r.name: cfg.oracle_for(r) for r in cfg.runs()}
    trained = sorted(n for n, o in switches.items() if o["encoder"] and o["started"])
    assert trained == ["topk_x4_k8", "topk_x8_k8"]
    assert all(o["score"] for o in switches.values())
    off = parse_study(dict(GOOD, oracle={"started": False}))
    assert not any(off.oracle_for(r)["started"] for r in off.runs())
    assert all(off.oracle_for(r)["encoder"] for r in off.runs())  # no cells: every cell
    with pytest.raises(HusaiError, match="'oracle.cells' must be a list of mappings"):
        parse_study(dict(GOOD, oracle={"cells": [{"colour": 1}]}))


def test_controls_are_optional_and_validated():
    assert parse_study(GOOD).controls == ()
    cfg = parse_study(
        {**GOOD, "stability": {"controls": ["memorised", "untrained"], "control_seeds": 2}}
    )
    assert cfg.controls == ("memorised", "untrained") and cfg.control_seeds == 2
    assert (
        parse_study({**GOOD, "stability": {"controls": ["untrained"]}}).control_seeds == 2
    )  # min(3, seeds)


def test_config_not_a_mapping():
    with pytest.raises(HusaiError, match="mapping"):
        parse_study([1, 2])


def test_cli_refuses_before_any_work(tmp_path):
    bad = tmp_path / "study.yaml"
    bad.write_text(yaml.safe_dump({**GOOD, "seeds": [1, "x"]}))
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "husai.cli", "study", "--config", str(bad), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "'seeds'" in r.stderr
    assert not out.exists()
    hook = tmp_path / "hook.yaml"
    hook.write_text(yaml.safe_dump({**GOOD, "hooks": ["blocks.7.hook_resid_post"]}))
    r = subprocess.run(
        [sys.executable, "-m", "husai.cli", "study", "--config", str(hook), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and "blocks.7.hook_resid_post" in r.stderr
        and "blocks.0.hook_resid_post" in r.stderr
    )
    assert not out.exists()


@pytest.mark.parametrize("name", ["default", "full"])
def test_shipped_studies_are_sweeps_over_width_and_l0(name):
    """What `make run` runs (and the full grid) vary width and L0 for TopK and ReLU at resid_post
    and mlp.hook_post on at least two models, with the controls on a reference cell only."""
    from husai.study.config import load_study

    cfg = load_study(name)
    runs = cfg.runs()
    assert len(cfg.model_seeds) >= 2 and {
        "blocks.0.hook_resid_post",
        "blocks.0.mlp.hook_post",
    } <= set(cfg.hooks)
    for arch, knob in (("topk", "k"), ("relu", "target_l0")):
        cells = [r.cfg for r in runs if r.cfg.architecture == arch]
        assert len({c.latents for c in cells}) >= 2 and len({getattr(c, knob) for c in cells}) >= 2
    assert 0 < sum(cfg.has_controls(r) for r in runs) < len(runs) / 4
