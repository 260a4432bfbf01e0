"""A requested L0 for ReLU / JumpReLU (husai.sae.calibrate) and dead-latent resampling
(husai.sae.resample): per-slot penalty weights train as each weight alone, the search brackets
and interpolates the target, the weight used is what every seed's files record, and resampling
gives dead latents data directions and ordinary Adam steps without touching the live ones."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from husai.errors import HusaiError
from husai.sae import calibrate
from husai.sae.checkpoint import load_saes
from husai.sae.config import SAETrainConfig
from husai.sae.metrics import reconstruction_metrics
from husai.sae.optim import make_optimizer
from husai.sae.resample import resample_dead
from husai.sae.run import run_train_sae
from husai.sae.train import init_saes, train_saes

torch.set_num_threads(1)


def _acts(n=320, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g) @ torch.randn(4, d, generator=g) + 0.1 * torch.randn(
        n, d, generator=g
    )


RELU = SAETrainConfig(
    architecture="relu", expansion=4, l1_coeff=0.05, epochs=3, batch_size=32, lr=1e-2
)
JUMP = SAETrainConfig(
    architecture="jumprelu",
    expansion=4,
    l0_coeff=0.05,
    epochs=3,
    batch_size=32,
    lr=1e-2,
    jumprelu_bandwidth=0.1,
    jumprelu_init_threshold=0.1,
)


@pytest.mark.parametrize("cfg", [RELU, JUMP], ids=["relu", "jumprelu"])
def test_per_slot_weights_train_as_each_weight_alone(cfg):
    acts, weights = _acts(), [0.01, 2.0, 0.05]
    name = "l1_coeff" if cfg.architecture == "relu" else "l0_coeff"
    together = train_saes(acts, cfg, [4, 4, 9], knobs=weights).sae
    for s, (seed, w) in enumerate(zip([4, 4, 9], weights)):
        alone = train_saes(acts, replace(cfg, **{name: w}), [seed]).sae
        for key, t in alone.state_dict().items():
            torch.testing.assert_close(
                together.state_dict()[key][s], t[0], rtol=1e-4, atol=1e-5, msg=f"{key} slot {s}"
            )
        assert together.slot_hparams([s])[name] == pytest.approx(w)
    assert together.slot_hparams([0, 1])[name] == pytest.approx([0.01, 2.0])
    l0 = reconstruction_metrics(together, acts)["l0"]
    assert l0[0] > l0[1]  # same seed, 200x the weight: fewer active latents


def test_interpolation_is_linear_in_logs():
    lo, hi = dict(weight=1.0, l0=100.0), dict(weight=4.0, l0=10.0)
    # target 31.62 = 10^1.5 is halfway in log L0, so the weight is halfway in log weight: 2
    assert calibrate._interpolate(lo, hi, 10**1.5) == pytest.approx(2.0)
    assert calibrate._interpolate(lo, hi, 100.0) == pytest.approx(1.0)
    assert calibrate._interpolate(lo, hi, 10.0) == pytest.approx(4.0)


def test_search_brackets_the_target_in_one_pass():
    acts = _acts()
    grid = reconstruction_metrics(
        train_saes(acts, RELU, [3] * 5, knobs=[0.05 * f for f in calibrate.FACTORS]).sae, acts
    )["l0"]
    assert (
        grid == sorted(grid, reverse=True) and grid[0] > grid[-1]
    )  # L0 falls with the weight here
    target = math.sqrt(grid[1] * grid[2])  # between the 2nd and 3rd weight
    weight, table, bracketed = calibrate.calibrate_weight(acts, replace(RELU, target_l0=target), 3)
    assert bracketed and len(table) == 5
    assert [r["l0"] for r in table] == pytest.approx(grid)
    assert 0.05 * calibrate.FACTORS[1] < weight < 0.05 * calibrate.FACTORS[2]


def test_search_moves_the_grid_when_the_target_is_outside():
    acts = _acts()
    first = 0.05 * calibrate.FACTORS[-1]
    low = reconstruction_metrics(train_saes(acts, replace(RELU, l1_coeff=first), [3]).sae, acts)[
        "l0"
    ][0]
    weight, table, _ = calibrate.calibrate_weight(acts, replace(RELU, target_l0=low / 4), 3)
    assert (
        len(table) >= 10 and max(r["weight"] for r in table) > first
    )  # a second pass, to larger weights
    assert weight > first


def test_train_sae_with_target_l0_records_the_weight_every_seed_used(tmp_path):
    acts = _acts()
    f = tmp_path / "acts.safetensors"
    from husai.io import save_tensors

    save_tensors(f, {"activations": acts})
    cfg = replace(RELU, target_l0=6.0)
    m = run_train_sae(cfg, tmp_path / "out", [1, 2], activations=f, progress=False)
    cal = m["calibration"]
    assert (
        cal["target_l0"] == 6.0
        and cal["knob"] == "l1_coeff"
        and cal["start"] == 0.05
        and cal["seed"] == 1
    )
    assert len(cal["table"]) >= 5
    assert m["config"]["l1_coeff"] == pytest.approx(cal["weight"])
    for seed, sae in load_saes(tmp_path / "out").items():
        assert sae.cfg["metadata"]["husai_hparams"]["l1_coeff"] == pytest.approx(cal["weight"])
        assert m["per_seed"][str(seed)]["sparsity_coeff"] == pytest.approx(cal["weight"])


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_target_l0_is_refused_for_the_topk_family(arch):
    with pytest.raises(HusaiError, match="target_l0"):
        SAETrainConfig(architecture=arch, target_l0=8.0).validate()


def test_resample_dead_config_is_checked():
    with pytest.raises(HusaiError, match="resample_dead"):
        replace(RELU, resample_dead=[0]).validate()
    with pytest.raises(HusaiError, match="resample_dead"):
        replace(RELU, resample_dead=[2, 2]).validate()


@pytest.mark.parametrize("optimizer", ["adam", "row_adam"])
def test_resampling_gives_dead_latents_data_directions(optimizer):
    acts = _acts()
    cfg = replace(RELU, optimizer=optimizer)
    sae = init_saes(acts, cfg, [1, 2])
    opt = make_optimizer(sae, optimizer, 1e-2, (0.9, 0.999))
    sae.training_loss(acts[:32], torch.zeros(2, sae.d_sae, dtype=torch.bool))[0].backward()
    opt.step()  # Adam state exists
    dead = torch.zeros(2, sae.d_sae, dtype=torch.bool)
    dead[0, [1, 5, 6]] = True
    dead[1, [0]] = True
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    v_before = opt.state[sae.W_dec]["exp_avg_sq"].clone()
    counts = resample_dead(sae, opt, acts, dead, [1, 2], epoch=3)
    assert counts == [3, 1]
    centred = acts  # each new decoder row is the unit direction of some x - b_dec
    for s in range(2):
        for j in dead[s].nonzero().squeeze(1).tolist():
            u = sae.W_dec.detach()[s, j]
            assert float(u.norm()) == pytest.approx(1.0, abs=1e-5)
            dirs = centred - sae.b_dec.detach()[s]
            cos = (dirs @ u) / dirs.norm(dim=-1)
            assert float(cos.max()) == pytest.approx(1.0, abs=1e-5)
            enc = sae.W_enc_T.detach()[s, j]
            assert float(torch.nn.functional.cosine_similarity(enc, u, dim=0)) == pytest.approx(
                1.0, abs=1e-5
            )
            assert float(sae.b_enc.detach()[s, j]) == 0.0
            assert float(opt.state[sae.W_dec]["exp_avg"][s, j].abs().max()) == 0.0
            live = ~dead[s]
            torch.testing.assert_close(
                opt.state[sae.W_dec]["exp_avg_sq"][s, j], v_before[s][live].mean(0)
            )
    live = ~dead
    for k in ("W_dec", "W_enc_T", "b_enc"):
        assert torch.equal(sae.state_dict()[k][live], before[k][live])  # live latents untouched
    again = init_saes(acts, cfg, [1, 2])
    again.load_state_dict(before)
    opt2 = make_optimizer(again, optimizer, 1e-2, (0.9, 0.999))
    again.training_loss(acts[:32], torch.zeros(2, sae.d_sae, dtype=torch.bool))[0].backward()
    opt2.step()
    again.load_state_dict(before)
    resample_dead(again, opt2, acts, dead, [1, 2], epoch=3)
    assert torch.equal(again.W_dec, sae.W_dec)  # seeded by (seed, epoch): the same picks


def test_training_resamples_at_the_chosen_epochs():
    acts = _acts()
    # dead: not fired on the last 16 inputs (0.05 epochs), so that a few latents count as dead here
    cfg = replace(
        RELU,
        expansion=16,
        l1_coeff=50.0,
        lr=0.1,
        epochs=5,
        resample_dead=[2, 4, 9],
        dead_after_epochs=0.05,
    )
    res = train_saes(acts, cfg, [1])
    rows = {r["epoch"]: r for r in res.history}
    assert "resampled" in rows[2] and "resampled" in rows[4]
    assert all("resampled" not in rows[e] for e in (1, 3, 5))  # 9 is past the end
    assert rows[2]["resampled"][0] > 0
    plain = train_saes(acts, replace(cfg, resample_dead=[]), [1])
    assert all("resampled" not in r for r in plain.history)
    assert not torch.equal(plain.sae.W_dec, res.sae.W_dec)


def test_next_step_brackets_moves_or_stops_at_collapse():
    r = lambda w, l0, ev=0.9: dict(weight=w, l0=l0, ev=ev)
    # bracketed between 2 (L0 40) and 4 (L0 10): halfway in log L0 (20) is halfway in log weight
    w, start = calibrate.next_step([r(1, 80), r(2, 40), r(4, 10), r(8, 5)], 20.0)
    assert start is None and w == pytest.approx(2 * math.sqrt(2))
    assert calibrate.next_step([r(1, 80), r(2, 60)], 20.0) == (
        None,
        32,
    )  # L0 too high: from 2 up to 2 x 256
    assert calibrate.next_step([r(1, 15), r(2, 12)], 20.0) == (
        None,
        1 / 16,
    )  # already too sparse: smaller
    # L0 8.1 at weight 32 with EV 0 (collapsed) does not count; larger weights only collapse
    # further: stop
    table = [r(8, 24.3), r(16, 12.8, 0.557), r(32, 8.1, 0.0), r(64, 9.9, 0.0), r(128, 5.0, 0.0)]
    assert calibrate.next_step(table, 8.0) == (None, None)
    assert calibrate.next_step([r(1, 5, 0.0), r(2, 3, 0.0)], 8.0) == (
        None,
        1 / 16,
    )  # all collapsed: go down
