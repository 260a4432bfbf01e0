"""The report's answer (husai.study.answer) on planted study tables whose answer is known: results
rows with results.csv's own column names, for seeds that are identical copies, for random
dictionaries, and for an SAE that is the oracle tiling; then on the real small study."""

from __future__ import annotations

import re

import pytest

from husai.study.answer import DEAD_SHARE, answer, answer_markdown, cells, notes, summarise

FIGS = {"headline": "headline.png", "levels": "stability_vs_null.png", "gap": "sweep.png"}


def _cell(
    run,
    *,
    model_seed=0,
    hook="blocks.0.hook_resid_post",
    arch="topk",
    latents=64,
    k=8,
    pw=(0.8, 0.7),
    half=0.01,
    cj=(0.9, 0.5),
    act=0.8,
    coverage=(0.5, 0.1, 0.99),
    near=0.0,
    gap=0.1,
    reading="optimisation",
    frac_dead=0.0,
    converged=True,
    bracketed=None,
    seeds=(1, 2, 3),
):
    """One cell's SAE rows. pw, cj: (value, null); coverage: (SAE, rotated reference, oracle)."""
    eff, ceff = pw[0] - pw[1], cj[0] - cj[1]
    rows = []
    for i, s in enumerate(seeds):
        wobble = (i - 1) * 0.01  # the seeds' own coverage differs a little
        rows.append(
            dict(
                run=run,
                status="ok",
                model_seed=model_seed,
                hook=hook,
                architecture=arch,
                latents=latents,
                k=k,
                target_l0=None,
                l1_coeff=None,
                l0_coeff=None,
                seed=s,
                l0=float(k or 8),
                explained_variance=0.9,
                frac_dead=frac_dead,
                training_converged=converged,
                l0_bracketed=bracketed,
                pw_mcc_dec=pw[0],
                pw_mcc_dec_ci_lo=pw[0] - half,
                pw_mcc_dec_ci_hi=min(1.0, pw[0] + half),
                pw_mcc_dec_null=pw[1],
                pw_mcc_dec_effect=eff,
                pw_mcc_dec_effect_ci_lo=eff - half,
                pw_mcc_dec_effect_ci_hi=eff + half,
                class_jaccard=cj[0],
                class_jaccard_ci_lo=cj[0] - half,
                class_jaccard_ci_hi=min(1.0, cj[0] + half),
                class_jaccard_null=cj[1],
                class_jaccard_effect=ceff,
                class_jaccard_effect_ci_lo=ceff - half,
                class_jaccard_effect_ci_hi=ceff + half,
                act_mcc=act,
                act_mcc_ci_lo=act - half,
                act_mcc_ci_hi=act + half,
                act_mcc_symmetry_null=act - 0.02,
                plane_coverage=coverage[0] + wobble,
                plane_coverage_reference=coverage[1],
                plane_coverage_oracle=coverage[2],
                trained_near_truth=near,
                optimisation_gap_mean=gap,
                optimisation_gap_ci_lo=gap - 0.02,
                optimisation_gap_ci_hi=gap + 0.02,
                oracle_reading=reading,
                converged=converged,
            )
        )
    return rows


def _text(a, key):
    return next(s.text for s in a.sentences if s.key == key)


def test_identical_seeds_learn_the_same_features():
    rows = _cell("a", pw=(1.0, 0.7), cj=(1.0, 0.5)) + _cell("b", latents=256, pw=(1.0, 0.72))
    a = answer(rows, FIGS)
    assert _text(a, "atoms").startswith("SAE seeds learn the same features at the level of atoms")
    assert "beyond chance in 2 of 2 cells" in _text(a, "atoms")
    assert _text(a, "levels").startswith("Beyond atoms, the seeds find the same answer classes")
    # the number is the effect over the null, with its interval (one model seed: SAE seeds')
    atoms = next(s for s in a.sentences if s.key == "atoms")
    assert atoms.number == pytest.approx(
        0.29
    )  # cells' effects 0.30 [0.29, 0.31], 0.28 [0.27, 0.29]
    assert atoms.ci == pytest.approx((0.28, 0.30))
    assert "one model seed: 95% CI across SAE seeds" in a.basis


def test_random_dictionaries_are_no_better_than_chance():
    rows = []
    for i, w in enumerate((64, 256)):
        rows += _cell(
            f"r{w}",
            latents=w,
            pw=(0.70 + 0.001 * i, 0.70),
            half=0.02,
            cj=(0.48, 0.48),
            coverage=(0.05, 0.05, 0.99),
            reading="objective",
            gap=-0.05,
        )
    a = answer(rows, FIGS)
    assert _text(a, "atoms").startswith(
        "SAE seeds agree on their atoms (decoder rows) no better than chance"
    )
    assert "beyond chance in 0 of 2 cells" in _text(a, "atoms")
    assert "no more alike than chance" in _text(a, "levels")
    assert _text(a, "truth").startswith(
        "They are no closer to the model's true features than chance"
    )
    assert _text(a, "gap").startswith("What keeps them from the truth is the objective")
    assert "does not change clearly" in _text(a, "width")


def test_a_planted_oracle_sae_has_the_true_features():
    rows = _cell("o", coverage=(0.97, 0.1, 0.99), near=1.0, gap=0.0, reading="neither")
    rows += _cell("o2", latents=256, coverage=(0.98, 0.1, 0.99), near=0.95, reading="neither")
    a = answer(rows, FIGS)
    truth = _text(a, "truth")
    assert truth.startswith("They are the model's true features:")
    assert "0.990 for the oracle tiling" in truth
    # the same coverage without rows near the atoms is only "partly"
    for r in rows:
        r["trained_near_truth"] = 0.0
    assert _text(answer(rows, FIGS), "truth").startswith("They are partly the model's true")
    assert _text(a, "gap").startswith("The oracle does not say")


def test_model_seeds_give_the_interval_and_width_trends_are_read():
    rows = []
    for ms, shift in ((0, 0.0), (1, 0.02), (2, 0.04)):
        rows += _cell(f"m{ms}/64", model_seed=ms, latents=64, pw=(0.80 + shift, 0.70))
        rows += _cell(f"m{ms}/256", model_seed=ms, latents=256, pw=(0.90 + shift, 0.70))
    cs = cells(rows)
    mean, lo, hi = summarise(cs, "pw_effect")
    # per model seed the mean of its two cells' effects: 0.15, 0.17, 0.19 -> t-interval over 3
    assert mean == pytest.approx(0.17)
    assert lo == pytest.approx(0.17 - 4.302653 * 0.02 / 3**0.5, abs=1e-4)
    assert hi == pytest.approx(0.17 + 4.302653 * 0.02 / 3**0.5, abs=1e-4)
    a = answer(rows, FIGS)
    assert "95% CI across 3 model seeds" in a.basis
    width = next(s for s in a.sentences if s.key == "width")
    assert width.text.startswith("From 64 to 256 latents, agreement over chance rises")
    assert width.number == pytest.approx(0.1)  # the same +0.1 on every model: a zero-width CI
    assert width.ci == pytest.approx((0.1, 0.1))
    assert width.figure == "headline.png"


def test_architectures_hooks_and_the_cells_to_read_with_care():
    rows = _cell("t", pw=(0.9, 0.7), frac_dead=0.02)
    rows += _cell(
        "r", arch="relu", k=None, pw=(0.75, 0.7), frac_dead=0.3, converged=True, bracketed=True
    )
    rows += _cell("r2", arch="relu", k=None, latents=256, frac_dead=0.2, converged=False)
    rows += _cell("u", arch="relu", k=None, latents=512, pw=(0.99, 0.7), bracketed=False)
    for r in rows:
        if r["architecture"] == "relu":
            r["target_l0"] = 8.0
    a = answer(rows, FIGS)
    others = _text(a, "others")
    assert "highest for topk at hook_resid_post (+0.200" in others
    assert "lowest for relu at hook_resid_post" in others
    # the unbracketed cell (effect 0.29) is left out of the comparison: relu's mean is 0.075 (0.05,
    # 0.1 from the other two cells), not 0.147
    assert "relu at hook_resid_post (+0.075" in others
    said = " ".join(notes(cells(rows)))
    assert f"{0.3:.0%} of the latents are dead after training converged" in said
    assert (
        "(the stopping rule met, so not under-training): the converged state of this relu "
        "recipe at this width and L0" in said
    )
    assert "20% of the latents are dead, but training had not converged" in said
    assert "2%" not in said and DEAD_SHARE == 0.10
    assert "relu target L0 8 at 512 latents" in said and "left out of matched-L0" in said


def test_a_grid_without_the_inputs_names_what_it_cannot_answer():
    rows = _cell("one")
    for r in rows:
        for key in list(r):
            if key.startswith(("plane_coverage", "optimisation_gap", "oracle")):
                r[key] = None
    a = answer(rows, FIGS)
    assert [s.key for s in a.sentences] == ["atoms", "levels"]
    md = answer_markdown(a, lambda f: f"figures/{f}")
    assert "Not answered by this grid: recovery of the ground truth;" in md
    assert md.startswith("1. SAE seeds") and "(figures/headline.png)" in md


@pytest.mark.slow
def test_the_answer_of_a_real_study(finished_study):
    """The rules on the small study's own table: every sentence carries a number with its interval
    and names a figure the report wrote, and the report opens with the answer."""
    from husai.study.config import load_study
    from husai.study.results import build_table

    _, out, _, _ = finished_study
    rows = build_table(out, load_study(out / "study.yaml"))
    figs = {p.name for p in (out / "figures").glob("*.png")}
    a = answer(rows, {"headline": "headline.png", "levels": "stability_vs_null.png"})
    assert 3 <= len(a.sentences) <= 6
    for s in a.sentences:
        assert re.search(r"[-+]?\d\.\d{3} \[[-+]?\d\.\d{3}, [-+]?\d\.\d{3}\]", s.text), s.text
        assert s.figure in figs, (s.figure, figs)
        assert s.ci is not None and s.ci[0] <= s.number <= s.ci[1]
    md = (out / "report.md").read_text()
    assert md.split("\n## ")[1].startswith("Answer\n")
    assert answer_markdown(a, lambda f: f"figures/{f}") in md
    assert "![headline](figures/headline.png)" in md


def test_a_split_reading_is_said_per_architecture_not_as_the_studys():
    """Half the cells read "objective" (TopK), half "optimisation" (ReLU): no reading holds most
    cells, so the sentence names each architecture's and never says what keeps "them" overall."""
    rows = []
    for w in (64, 256):
        rows += _cell(f"t{w}", latents=w, reading="objective", gap=-0.03)
        rows += _cell(f"r{w}", arch="relu", k=None, latents=w, reading="optimisation", gap=0.05)
    text = _text(answer(rows, FIGS), "gap")
    assert text.startswith("What keeps them from the truth differs by architecture")
    assert "optimisation for relu (2 of 2 cells), objective for topk (2 of 2 cells)" in text
    assert "+0.010" in text  # the mean gap over all four cells
    rows += _cell("t1024", latents=1024, reading="objective", gap=-0.03)  # 3 of 5: the study's
    assert _text(answer(rows, FIGS), "gap").startswith(
        "What keeps them from the truth is the objective"
    )
