"""The comparison of several SAEs (husai.analysis.compare), through `husai compare` / `husai
fourier` and the Python API, on hand-built SAE folders."""

import json
import sys

import numpy as np
import pytest
import torch

from husai.analysis.nulls import isotropic_dictionary
from husai.io import save_tensors, write_json

P, HOOK = 13, "blocks.0.hook_resid_post"


def _model(root):
    from husai.model.transformer import ModelConfig, Transformer

    mc = ModelConfig(p=P)
    cfg = dict(
        **mc.to_hooked_transformer_config(),
        p=P,
        operation="add",
        seed=0,
        split_seed=0,
        train_frac=0.5,
    )
    write_json(root / "model" / "config.json", cfg)
    save_tensors(root / "model" / "model.safetensors", Transformer(mc).init_weights(0).state_dict())
    return root / "model"


def _sae(folder, W_dec, seed, model_path, hook=HOOK, k=4, W_enc=None, d_sae_cfg=None):
    d_sae, d_in = W_dec.shape
    save_tensors(
        folder / "sae_weights.safetensors",
        dict(
            W_enc=(W_dec.T if W_enc is None else W_enc).contiguous().float(),
            W_dec=W_dec.float(),
            b_enc=torch.zeros(d_sae),
            b_dec=torch.zeros(d_in),
        ),
    )
    write_json(
        folder / "cfg.json",
        dict(
            architecture="topk",
            d_in=d_in,
            d_sae=d_sae_cfg or d_sae,
            k=k,
            dtype="float32",
            device="cpu",
            apply_b_dec_to_input=True,
            normalize_activations="none",
            metadata=dict(hook_name=hook, model_path=str(model_path), seed=seed),
        ),
    )
    return folder


def _cli(args, capsys, monkeypatch):
    from husai.cli import main

    monkeypatch.setattr(sys, "argv", ["husai", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def saes(tmp_path):
    model = _model(tmp_path)
    A = isotropic_dictionary(48, 128, 1)
    perm = torch.randperm(48, generator=torch.Generator().manual_seed(0))
    dirs = [
        _sae(tmp_path / "a" / "seed_1", A, 1, model),
        _sae(tmp_path / "a" / "seed_2", A[perm], 2, model),
        _sae(tmp_path / "b", isotropic_dictionary(48, 128, 3), 3, model),
    ]
    return tmp_path, model, dirs


def test_compare_cli_writes_json_plots_and_nulls(saes, capsys, monkeypatch):
    root, model, dirs = saes
    code, out, err = _cli(
        ["compare", root / "a", dirs[2], "--json", root / "c.json", "--plots", root / "plots"],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    res = json.loads((root / "c.json").read_text())
    assert [s["seed"] for s in res["saes"]] == [
        1,
        2,
        3,
    ]  # the multi-seed folder expanded to its seeds
    st = res["stability"]
    M = np.array(st["levels"]["pw_mcc_dec"]["matrix"], dtype=float)
    assert (
        M[0, 1] == pytest.approx(1.0) and M[0, 2] < 0.5
    )  # permuted copy vs independent dictionary
    assert st["levels"]["shared_fraction"]["matrix"][0][1] == pytest.approx(1.0)
    assert st["levels"]["act_mcc"]["matrix"][0][1] == pytest.approx(
        1.0
    )  # same latents, same activations
    lv = st["levels"]["pw_mcc_dec"]
    # the model here is untrained: a shift of the inputs is no isometry of its representation, so
    # the symmetry null (an equally good SAE at another phase) does not exist and is not drawn
    assert (
        st["symmetry_fit"] < 0.9
        and set(lv["nulls"]) == {"isotropic", "matched_geometry"}
        and "phase" not in lv
    )
    assert lv["ci"][0] <= lv["value"] <= lv["ci"][1] and lv["fitting"]["nulls"] == [
        "matched_geometry"
    ]
    assert len(st["per_latent"]["seed 1"]["reappearance"]) == len(
        st["per_latent"]["seed 1"]["index"]
    )
    # the shared-init reference compares the seeds' initialisations (no recorded husai config: Gao
    # et al.'s random init), in the data metric
    from husai.analysis.agreement import reference_agreement, seed_view
    from husai.analysis.compare import init_fn_for, model_context
    from husai.analysis.data_span import data_span
    from husai.sae.checkpoint import load_sae

    init = init_fn_for(load_sae(dirs[0]), None)
    span = data_span(model_context(model, HOOK, {})["acts"])
    views = [seed_view(str(s), init(128, 48, s)[1], init(128, 48, s)[0].T, span) for s in (1, 2, 3)]
    ref = reference_agreement(views)["pw_mcc_dec"]["value"]
    assert st["references"]["shared_init"]["pw_mcc_dec"]["value"] == pytest.approx(ref)
    assert (
        set(res["fourier"]) == {"seed 1", "seed 2", "seed 3"}
        and "summary" in res["frequency_level"]
    )
    assert (
        res["moved_from_init"]["seed 1"]["pw_mcc_to_init"] < 0.5
    )  # dictionary 1 is not husai's init for seed 1
    for f in ("pw_mcc_decoder.png", "mean_max_abs_cos_decoder.png", "frequency_histogram.png"):
        assert (root / "plots" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PW-MCC" in out and "chance null" in out


def test_compare_cli_refuses_bad_input(saes, capsys, monkeypatch):
    root, model, dirs = saes
    js = ["--json", root / "x.json"]
    cases = [
        ([dirs[0]], "at least two"),
        ([root / "model", dirs[0]], "no cfg.json"),
        ([root / "nope", dirs[0]], "not found"),
        ([dirs[0], dirs[0]], "more than once"),
        ([dirs[0], dirs[1]], None),
    ]
    other_hook = _sae(
        root / "h", isotropic_dictionary(48, 128, 4), 4, model, hook="blocks.0.hook_resid_mid"
    )
    other_d = _sae(root / "d", isotropic_dictionary(48, 64, 5), 5, model)
    bad_shape = _sae(root / "s", isotropic_dictionary(48, 128, 6), 6, model, d_sae_cfg=32)
    cases += [
        ([dirs[0], other_hook], "different hooks"),
        ([dirs[0], other_d], "different d_in"),
        ([dirs[0], bad_shape], "shape"),
    ]
    cases += [
        ([dirs[0], dirs[1], "--threshold", 1.5], "--threshold"),
        ([dirs[0], dirs[1], "--model", model, "--activations", root / "a.safetensors"], "not both"),
    ]
    for args, msg in cases:
        code, _, err = _cli(
            ["compare", *args] + (js if msg is not None else []), capsys, monkeypatch
        )
        assert code == 2 and (msg or "--json") in err and "Traceback" not in err, (args, err)
    code, _, err = _cli(["compare", dirs[0], other_d, "--force", *js], capsys, monkeypatch)
    assert code == 2 and "different d_in" in err  # --force cannot compare different spaces
    code, _, err = _cli(["compare", dirs[0], other_hook, "--force", *js], capsys, monkeypatch)
    assert code == 0, err
    assert any(
        "different hooks" in w for w in json.loads((root / "x.json").read_text())["warnings"]
    )


def test_fourier_cli_matches_the_direct_computation(saes, capsys, monkeypatch):
    from husai.analysis.latent_fourier import compute_fourier_overlap
    from husai.model.checkpoint import load_model
    from husai.model.data import make_tokens
    from husai.sae.checkpoint import load_sae

    root, model, dirs = saes
    code, out, err = _cli(
        ["fourier", dirs[2], "--model", model, "--json", root / "f.json", "--n-null", 2],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    rep = json.loads((root / "f.json").read_text())["saes"][0]
    m, _ = load_model(model)
    _, cache = m.run_with_cache(make_tokens(P), [HOOK])
    z = load_sae(dirs[2]).encode(cache[HOOK][:, -1])
    assert rep["fourier_overlap"] == pytest.approx(compute_fourier_overlap(z.double(), P), abs=1e-6)
    assert rep["n_live"] == int((z != 0).any(0).sum())
    assert set(rep["nulls_untrained"]["fourier_overlap"]) >= {"null_mean", "null_std", "z"}
    assert "Fourier validation" in out
    # every live latent has a type (husai.analysis.latent_types), listed with its measures
    types = rep["latent_types"]
    assert (
        sum(types["counts"].values()) == types["n_live"] == rep["n_live"] == len(types["latents"])
    )
    assert all(0 <= lat["off_span"] <= 1 + 1e-9 for lat in types["latents"])
    assert "what the live latents are" in out
    rec = rep["recovery"]["atoms"]["answer_centroids"]
    assert 0 <= rec["mcc"] <= 1 and set(rec["random_reference"]) == {
        "mcc",
        "precision",
        "recall",
        "f1",
    }


@pytest.mark.slow
def test_fourier_cli_on_neurons_of_a_grokked_model_matches_the_model_analysis(
    grokked_run, tmp_path, capsys, monkeypatch
):
    """Oracle SAE: identity encoder/decoder on blocks.0.mlp.hook_post, so latents are the MLP
    neurons. `husai fourier` must then reproduce the model analysis (husai.model.analyze, computed
    independently): the same count of single-frequency neurons per key frequency, and far above the
    untrained null."""
    run, _ = grokked_run
    metrics = json.loads((run / "metrics.json").read_text())
    d = 512
    eye = torch.eye(d, dtype=torch.float64)
    folder = _sae(tmp_path / "oracle", eye, 0, run, hook="blocks.0.mlp.hook_post")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(architecture="standard")
    cfg.pop("k")
    write_json(folder / "cfg.json", cfg)
    code, _, err = _cli(
        ["fourier", folder, "--model", run, "--json", tmp_path / "f.json"], capsys, monkeypatch
    )
    assert code == 0, err
    rep = json.loads((tmp_path / "f.json").read_text())["saes"][0]
    assert rep["key_frequencies"] == metrics["key_frequencies"]
    per_key = metrics["neurons_per_key_frequency"]
    assert {k: rep["pure_per_frequency"].get(k, 0) for k in per_key} == per_key
    n_pure = sum(rep["pure_per_frequency"].values())
    assert n_pure == round(metrics["frac_neurons_single_freq"] * d)
    assert rep["nulls_untrained"]["fourier_overlap"]["exceeds_null_max"]


def test_compare_without_the_recorded_model_needs_the_activations(tmp_path, capsys, monkeypatch):
    gone = tmp_path / "deleted_model"
    d1 = _sae(tmp_path / "s1", isotropic_dictionary(32, 16, 1), 1, gone)
    d2 = _sae(tmp_path / "s2", isotropic_dictionary(32, 16, 2), 2, gone)
    code, _, err = _cli(["compare", d1, d2, "--json", tmp_path / "c.json"], capsys, monkeypatch)
    assert code == 2 and "--activations" in err and "Traceback" not in err
    assert not (tmp_path / "c.json").exists()
    acts = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    save_tensors(tmp_path / "acts.safetensors", {"acts": acts})
    code, _, err = _cli(
        [
            "compare",
            d1,
            d2,
            "--json",
            tmp_path / "c.json",
            "--activations",
            tmp_path / "acts.safetensors",
        ],
        capsys,
        monkeypatch,
    )
    assert code == 0, err
    res = json.loads((tmp_path / "c.json").read_text())
    st = res["stability"]
    assert "fourier" not in res and "ground_truth" not in st
    assert set(st["levels"]["pw_mcc_dec"]["nulls"]) == {
        "isotropic",
        "matched_geometry",
    }  # no grid: no symmetry null
    assert any("not there" in w for w in res["warnings"])
    # two independent random dictionaries sit at their isotropic null (isotropic data: the span is
    # all of R^16)
    iso = st["levels"]["pw_mcc_dec"]["nulls"]["isotropic"]
    assert st["data_span"]["dim"] == 16 and abs(iso["effect"]) < 0.1


def test_compare_saes_python_api_matches_the_cli(saes):
    from husai.analysis.compare import compare_saes

    root, model, dirs = saes
    res = compare_saes(dirs[:2], model)
    assert res["stability"]["levels"]["pw_mcc_dec"]["value"] == pytest.approx(
        1.0
    )  # dirs[1] is a permuted dirs[0]
    assert res["frequency_level"]["summary"].keys() >= {"jaccard_mean", "subspace_overlap_mean"}
