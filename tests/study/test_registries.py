"""A new SAE family and a new null are each one declaration: a toy family in a temporary module and
a toy null, registered by the test, go through training, saving, loading, the seed comparison, the
results table, the report and the figures with no other file touched (README, "Where to add
things")."""

from __future__ import annotations

import csv
import importlib
import json
import shutil
import sys
from dataclasses import replace

import pytest
import torch
import yaml

TOY_FAMILY = '''
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from husai.sae.base import StackedSAE
from husai.sae.family import Family, FamilyConfig, register


class ShrinkSAE(StackedSAE):
    """z = ReLU(pre - margin): a soft-threshold SAE trained on the MSE alone."""

    architecture = "shrink"

    def __init__(self, n_seeds, d_in, d_sae, margin):
        super().__init__(n_seeds, d_in, d_sae)
        self.margin = float(margin)
        self.hparams = dict(margin=self.margin)

    def activate(self, pre, training=False):
        return F.relu(pre - self.margin)

    def sparsity_loss(self, x, pre, z, x_hat, dead):
        return pre.new_zeros(self.n_seeds)

    def saelens_form(self, slot):
        return "standard", {"b_enc": self.b_enc[slot] - self.margin}, {}


@dataclass
class ShrinkConfig(FamilyConfig):
    sparsity_key = "margin"
    columns = ("margin",)

    margin: float = 0.5
    """The soft threshold."""

    def build(self, n_seeds, d_in, d_sae, rescale, sparsity=None):
        return ShrinkSAE(n_seeds, d_in, d_sae, self.margin if sparsity is None else sparsity[0])

    def cell_knob(self):
        return f"m{self.margin:g}"

    def table(self, weight):
        return {"margin": self.margin}


register(Family("shrink", ShrinkConfig, ShrinkSAE, label="Shrink", color="tab:pink"))
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    from husai.sae.family import unregister

    (tmp_path / "husai_toy_family.py").write_text(TOY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("husai_toy_family")
    yield module
    unregister("shrink")
    sys.modules.pop("husai_toy_family", None)


@pytest.fixture
def toy_null():
    from husai.analysis.measures import Draw, Null, register_null, unregister_null
    from husai.analysis.stability import unit

    def permuted(ctx, gen):
        """Seed B's rows with their span coordinates permuted: its geometry scrambled, its norms
        kept."""
        B = ctx["B"]
        perm = torch.randperm(ctx["r"], generator=gen)
        return Draw(
            ctx["A"], replace(B, dec=unit(B.dec[:, perm]), enc=unit(B.enc[:, perm]), codes=None)
        )

    register_null(
        Null(
            "permuted",
            "permuted",
            controls_for="toy",
            drawn="toy",
            marker="*",
            color="tab:olive",
            pair=permuted,
        )
    )
    yield "permuted"
    unregister_null("permuted")


def test_a_toy_family_trains_saves_loads_and_keeps_its_keys(toy_family, tmp_path):
    from husai.errors import HusaiError
    from husai.sae.checkpoint import load_sae, save_sae
    from husai.sae.config import config_from_dict
    from husai.sae.train import train_saes

    cfg = config_from_dict(
        dict(architecture="shrink", margin=0.25, expansion=2, epochs=2, batch_size=64)
    )
    assert cfg.margin == 0.25 and cfg.to_dict()["margin"] == 0.25
    with pytest.raises(HusaiError, match="'k' is for topk"):
        config_from_dict(dict(architecture="shrink", k=4))
    acts = torch.randn(300, 6, generator=torch.Generator().manual_seed(0)) @ torch.randn(6, 8)
    sae = train_saes(acts, cfg, [1, 2]).sae
    assert isinstance(sae, toy_family.ShrinkSAE)
    save_sae(tmp_path / "s", sae, slot=1)
    loaded = load_sae(tmp_path / "s")
    with torch.no_grad():
        own = sae.select(1)(acts)[0]
    assert torch.allclose(
        loaded(acts), own, atol=1e-4
    )  # SAELens's "standard" form is the same function


@pytest.mark.slow
def test_a_toy_family_and_a_toy_null_reach_the_table_report_and_figures(
    toy_family, toy_null, finished_study, tmp_path, monkeypatch
):
    from husai.study import figures
    from husai.study.runner import run_study

    legends: list[str] = []
    save = figures._save

    def keep_legends(fig, path):
        for ax in fig.axes:
            legends.extend(ax.get_legend_handles_labels()[1])
        return save(fig, path)

    monkeypatch.setattr(figures, "_save", keep_legends)
    cfg_path, done, _, _ = finished_study
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["saes"] = [
        {
            "architecture": "shrink",
            "expansion": 2,
            "margin": [0.5, 2.0],
            "epochs": 2,
            "batch_size": 128,
        }
    ]
    cfg["stability"] = {"threshold": 0.7}
    out = tmp_path / "study"
    shutil.copytree(done / "models", out / "models")  # the same model: only the cells train
    for folder in (tmp_path, out):  # a study folder with this config and its model: a resume
        (folder / "study.yaml").write_text(yaml.safe_dump(cfg))
    run_study(tmp_path / "study.yaml", out, progress=False)

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["architecture"] for r in rows} == {"shrink"} and {r["margin"] for r in rows} == {
        "0.5",
        "2.0",
    }
    assert {r["run"].split("/")[-1] for r in rows} == {"shrink_x2_m0.5", "shrink_x2_m2"}
    assert all(r["pw_mcc_dec_permuted_null"] not in ("", None) for r in rows)
    analysis = json.loads((out / rows[0]["run"] / "analysis.json").read_text())
    assert "permuted" in analysis["stability"]["levels"]["pw_mcc_dec"]["nulls"]
    report = (out / "report.md").read_text()
    assert "permuted null" in report and "shrink_x2_m0.5" in report
    assert "permuted null" in legends and any(label.startswith("Shrink") for label in legends)
