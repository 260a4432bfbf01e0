"""The model-side controls of stability (husai.study.controls): the memorised checkpoint is what it
claims to be, the untrained model is the run's own initialisation, and the controls are measured."""

import json

import pytest
import torch

from husai.model.analyze import loss_acc
from husai.model.checkpoint import load_model
from husai.model.data import make_dataset
from husai.model.transformer import Transformer
from husai.sae.config import SAETrainConfig
from husai.study.controls import run_controls

HOOK = "blocks.0.hook_resid_post"


@pytest.mark.slow
def test_the_memorised_checkpoint_fits_the_training_pairs_before_the_model_generalised(grokked_run):
    run, metrics = grokked_run
    assert (
        metrics["memorised_epoch"] is not None
        and metrics["memorised_epoch"] < metrics["grokked_epoch"]
    )
    model, cfg = load_model(run, which="memorised")
    data = make_dataset(cfg["p"], cfg["train_frac"], cfg["split_seed"], cfg["operation"])
    _, train_acc = loss_acc(model, data.tokens[data.train_idx], data.labels[data.train_idx])
    _, test_acc = loss_acc(model, data.tokens[data.test_idx], data.labels[data.test_idx])
    assert train_acc >= 0.99 and test_acc < 0.9
    assert test_acc == pytest.approx(metrics["memorised_test_acc"], abs=1e-6)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    first = next(r for r in history if r["train_acc"] >= 0.99 and r["test_acc"] < 0.9)
    assert first["epoch"] == metrics["memorised_epoch"]  # the FIRST such evaluation


def test_the_untrained_model_is_the_runs_own_initialisation(tiny_run):
    run, _ = tiny_run
    model, cfg = load_model(run, which="untrained")
    fresh = Transformer(model.cfg).init_weights(cfg["seed"])
    for (k, v), (_, w) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(v, w), k
    trained, _ = load_model(run)
    assert not torch.equal(trained.state_dict()["embed.W_E"], model.state_dict()["embed.W_E"])
    with pytest.raises(Exception, match="unknown model checkpoint"):
        load_model(run, which="nope")


@pytest.mark.slow
def test_controls_measure_the_same_recipe_on_the_memorised_and_untrained_models(grokked_run):
    run, _ = grokked_run
    cfg = SAETrainConfig(architecture="topk", expansion=2, k=4, epochs=3, batch_size=128)
    out = run_controls(run, HOOK, cfg, [1, 2, 3])
    assert set(out) == {"memorised", "untrained"}
    for which, c in out.items():
        assert "error" not in c, c
        lv = c["levels"]["pw_mcc_dec"]
        assert -1 <= lv["ci"][0] <= lv["value"] <= lv["ci"][1] <= 1 and lv["n_pairs"] == 3
        assert set(lv["nulls"]) >= {"isotropic", "matched_geometry"}
        assert len(c["explained_variance"]) == 3 and all(ev <= 1 for ev in c["explained_variance"])
        assert c["shared_init"]["value"] is not None
    # a random embedding spreads the untrained residual over many more directions than training
    # leaves
    from husai.analysis.data_span import data_span
    from husai.sae.activations import model_activations

    grokked_dim = data_span(model_activations(run, hook=HOOK)[0]).basis.shape[1]
    assert out["untrained"]["data_span"]["dim"] > grokked_dim
    # nor is the shift of the inputs an isometry of a random representation: no symmetry null there
    assert "symmetry" not in out["untrained"]["levels"]["pw_mcc_dec"]["nulls"]
    assert (
        out["memorised"]["epoch"]
        == json.loads((run / "metrics.json").read_text())["memorised_epoch"]
    )
