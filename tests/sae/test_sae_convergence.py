"""The convergence rule (SAETrainConfig.converge_ev, husai.sae.train.converged): on hand-built
histories, and in training, where it only decides when to stop: the SAEs it stops at epoch n are
exactly the SAEs of a fixed n-epoch run."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from husai.errors import HusaiError
from husai.sae.config import config_from_dict
from husai.sae.train import converged, train_saes

from tiny_sae_configs import tiny_configs

torch.set_num_threads(1)


def _rows(evs: list[list[float]], dead: list[list[float]]) -> list[dict]:
    return [dict(epoch=i + 1, ev=e, frac_dead=d) for i, (e, d) in enumerate(zip(evs, dead))]


def test_the_rule_on_hand_built_histories():
    flat = [[0.5, 0.6], [0.9, 0.9], [0.901, 0.9005], [0.9015, 0.901], [0.902, 0.9012]]
    no_dead = [[0.0, 0.0]] * 5
    # window 3: ev[-1] - ev[-4] = 0.002 and 0.0012 for the two seeds
    assert converged(_rows(flat, no_dead), tol=0.0025, window=3)
    assert not converged(_rows(flat, no_dead), tol=0.0015, window=3)  # seed 0 rose 0.002 >= tol
    assert not converged(_rows(flat, no_dead), tol=0.01, window=4)  # 0.9 - 0.5 over 4 epochs
    assert not converged(_rows(flat[:3], no_dead[:3]), tol=1.0, window=3)  # too few epochs
    falling = [[0.3, 0.0], [0.3, 0.0], [0.2, 0.0], [0.1, 0.0], [0.1, 0.0]]
    assert not converged(_rows(flat, falling), tol=0.0025, window=3)  # latents still revived
    rising = [[0.0, 0.0], [0.0, 0.0], [0.1, 0.0], [0.1, 0.0], [0.2, 0.0]]
    assert converged(_rows(flat, rising), tol=0.0025, window=3)  # dying latents do not hold it


def _acts(n=400, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 0.5


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_training_stops_where_the_rule_holds_and_is_otherwise_unchanged(arch):
    cfg = replace(tiny_configs(epochs=60)[arch], converge_ev=0.002, converge_window=2)
    res = train_saes(_acts(), cfg, [1, 2])
    n = len(res.history)
    assert res.converged is True and 2 < n < 60
    assert converged(res.history, 0.002, 2)
    assert not converged(res.history[:-1], 0.002, 2)  # it stopped at the first epoch it could
    fixed = train_saes(_acts(), replace(cfg, converge_ev=None, epochs=n), [1, 2])
    assert fixed.converged is None
    for name, t in res.sae.state_dict().items():
        torch.testing.assert_close(t, fixed.sae.state_dict()[name], rtol=0, atol=0, msg=name)


def test_the_cap_comes_first_when_the_rule_never_holds():
    cfg = replace(tiny_configs(epochs=4)["topk"], converge_ev=1e-12, converge_window=1)
    res = train_saes(_acts(), cfg, [1])
    assert res.converged is False and len(res.history) == 4


def test_converge_keys_are_validated():
    assert config_from_dict({"converge_ev": 0.002}).converge_ev == 0.002
    with pytest.raises(HusaiError, match="'converge_ev' must be a positive number"):
        config_from_dict({"converge_ev": -1.0})
    with pytest.raises(HusaiError, match="'converge_window' must be >= 1"):
        config_from_dict({"converge_window": 0})
