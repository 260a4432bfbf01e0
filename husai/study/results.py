"""The results table: one row per SAE, rebuilt from the run folders alone.

Columns: the grid parameters, status/error, every SAE metric of train-sae (mse, explained_variance,
l0, frac_dead, delta_ce, ...), the SAE's Fourier validation (fourier_overlap, frac_pure, coverage,
with the untrained-SAE null), its latent types and centroid MCC (centroid_mcc: the live rows
Hungarian-matched to the answer centroids, with its references), and its cell's cross-seed
stability in the data metric (husai.analysis.agreement): per metric M the mean over seed pairs (M),
its 95% CI (M_ci_lo, M_ci_hi), the fitting null's mean (M_null) and the effect over it with its CI
(M_effect, M_effect_ci_lo, M_effect_ci_hi) and, per declared null N, its mean (M_N_null); the
shared-init reference's PW-MCC; the raw-coordinate PW-MCC (basis-dependent, kept for comparison);
and the SAE's own mean PW-MCC to the other seeds, its off-span share and its latents' mean
reappearance probability; the oracle reading and the plane recovery against the complete truth
(oracle_columns).
Timing columns are left out so that a resumed study gives exactly the same table.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from husai.analysis.measures import NULLS, measures, nulls_for
from husai.io import atomic_write_bytes, read_json
from husai.sae.family import families
from husai.study.config import StudyConfig

SAE_METRICS = (
    "mse",
    "explained_variance",
    "l0",
    "frac_dead",
    "frac_dense",
    "spliced_acc",
    "spliced_ce",
    "delta_ce",
    "ce_loss_recovered_zero",
    "ce_loss_recovered_mean",
    "cosine_to_init",
)
FOURIER = ("fourier_overlap", "frac_pure", "coverage", "n_live")


def family_columns() -> list[str]:
    """The knob columns of every registered family (k, target_l0, l1_coeff, ...), in registry
    order."""
    cols: list[str] = []
    for fam in families().values():
        cols += [c for c in fam.config.columns if c not in cols]
    return cols


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def cell_rows(folder: Path, run, root: Path) -> list[dict]:
    failed = read_json(folder / "failed.json") if (folder / "failed.json").is_file() else None
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    c = run.cfg
    weight = metrics.get("calibration", {}).get("weight")  # target_l0: the weight the search found
    d_sae, d_in = metrics.get("d_sae", c.latents), metrics.get("d_in")
    calibration = metrics.get("calibration") or {}
    base = dict(
        model_seed=run.model_seed,
        hook=run.hook,
        architecture=c.architecture,
        # the width used: latents (d_sae, also where the config gave an expansion) and d_sae / d_in
        expansion=_num(d_sae / d_in) if d_sae and d_in else None,
        latents=d_sae,
        d_in=d_in,
        epochs_trained=metrics.get("epochs_trained"),
        training_converged=metrics.get("converged"),
        # the L0 search (target_l0 families): whether two weights bracketed the target
        l0_bracketed=calibration.get("bracketed"),
    )
    base.update(
        dict.fromkeys(family_columns()), **c.family.table(weight)
    )  # every family's, this one's filled
    base["run"] = str(folder.relative_to(root))
    analysis = read_json(folder / "analysis.json") if (folder / "analysis.json").is_file() else {}
    if failed is None and not analysis and not metrics:
        failed = {"error": "not run (study interrupted before this cell)"}
    rows = []
    labels = [s["label"] for s in analysis.get("saes", [])]
    for i, seed in enumerate(run.seeds):
        row = dict(
            base, seed=seed, status="failed" if failed else "ok", error=(failed or {}).get("error")
        )
        per = metrics.get("per_seed", {}).get(str(seed), {})
        row.update({m: _num(per.get(m)) for m in SAE_METRICS})
        if row["cosine_to_init"] is None:  # metrics.json of husai < 0.3 called it decoder_drift
            row["cosine_to_init"] = _num(per.get("decoder_drift"))
        label = labels[i] if i < len(labels) else f"seed {seed}"
        fr = analysis.get("fourier", {}).get(label, {})
        row.update({m: _num(fr.get(m)) for m in FOURIER})
        row["n_key_covered"] = len(fr["covered"]) if "covered" in fr else None
        row["n_non_key_pure"] = (
            sum(fr["non_key_pure"].values()) if isinstance(fr.get("non_key_pure"), dict) else None
        )
        lt, rec = (
            fr.get("latent_types", {}),
            fr.get("recovery", {}).get("atoms", {}).get("answer_centroids", {}),
        )
        for t in ("plane feature", "answer detector", "input feature", "patch", "other"):
            row[f"n_{t.replace(' ', '_')}"] = lt.get("counts", {}).get(t)
        row["off_span"] = _num(lt.get("mean", {}).get("off_span"))
        row["centroid_mcc"], row["centroid_mcc_random"] = (
            _num(rec.get("mcc")),
            _num(rec.get("random_reference", {}).get("mcc")),
        )
        row["centroid_mcc_data_points"] = _num(rec.get("data_point_reference", {}).get("mcc"))
        row["hook_answer_share"] = _num(
            analysis.get("ground_truth", {}).get("variance", {}).get("answer")
        )
        nu = fr.get("nulls_untrained", {}).get("fourier_overlap", {})
        row["fourier_overlap_null"], row["fourier_overlap_z"] = (
            _num(nu.get("null_mean")),
            _num(nu.get("z")),
        )
        st = analysis.get("stability", {})
        stability = measures()
        levels = dict(
            st.get("levels", {}),
            **{k: v for k, v in st.get("ground_truth", {}).items() if k in stability},
        )
        for m in stability:
            r = levels.get(m, {})
            ci, fit = r.get("ci") or [None, None], r.get("fitting", {})
            eci = fit.get("effect_ci") or [None, None]
            row.update(
                {
                    m: _num(r.get("value")),
                    f"{m}_ci_lo": _num(ci[0]),
                    f"{m}_ci_hi": _num(ci[1]),
                    f"{m}_null": _num(fit.get("value")),
                    f"{m}_effect": _num(fit.get("effect")),
                    f"{m}_effect_ci_lo": _num(eci[0]),
                    f"{m}_effect_ci_hi": _num(eci[1]),
                }
            )
        for m in (
            stability
        ):  # every declared null's mean, after the chance readings (husai.analysis.measures)
            row.update(
                {
                    f"{m}_{k}_null": _num(
                        ((levels.get(m) or {}).get("nulls") or {}).get(k, {}).get("value")
                    )
                    for k in nulls_for(m)
                    if k in NULLS
                }
            )
        init = st.get("references", {}).get("shared_init", {}).get("pw_mcc_dec", {})
        row["pw_mcc_dec_shared_init"] = _num(init.get("value"))
        row["pw_mcc_dec_raw"] = _num(st.get("raw", {}).get("pw_mcc_dec", {}).get("value"))
        M = levels.get("pw_mcc_dec", {}).get("matrix")
        others = (
            [M[i][j] for j in range(len(M)) if j != i and M[i][j] is not None]
            if M and i < len(M)
            else []
        )
        row["pw_mcc_to_other_seeds"] = sum(others) / len(others) if others else None
        row["off_span_live"] = _num(st.get("off_span", {}).get(label))
        reap = [
            v
            for v in (st.get("per_latent", {}).get(label, {}).get("reappearance") or [])
            if v is not None
        ]
        row["latent_reappearance_mean"] = sum(reap) / len(reap) if reap else None
        row.update(oracle_columns(analysis.get("oracle") or {}, i))
        rows.append(row)
    return rows


def _at(values, i):
    return _num(values[i]) if isinstance(values, list) and i < len(values) else None


def oracle_columns(oracle: dict, i: int) -> dict:
    """The oracle reading's columns for seed slot i (husai.analysis.optimisation_gap): the oracle of
    that seed at the cell's width and k, the optimisation gap (this seed's, and the cell's mean with
    its 95% interval), the reading, the truth's remainder, and the started-at-the-truth run of this
    seed; and the plane recovery against the complete truth (plane_columns)."""
    per, gap, started = (
        (oracle.get("oracle") or {}).get("per_seed") or [],
        oracle.get("gap") or {},
        oracle.get("started") or {},
    )
    enc = oracle.get("encoder") or {}
    ci = gap.get("ci") or [None, None]
    mine = per[i] if i < len(per) else {}
    return dict(
        oracle_k=oracle.get("k"),
        oracle_atoms=mine.get("atoms"),
        oracle_ev=_num(mine.get("explained_variance")),
        oracle_l0=_num(mine.get("l0")),
        optimisation_gap=_at(gap.get("per_seed"), i),
        optimisation_gap_mean=_num(gap.get("mean")),
        optimisation_gap_ci_lo=_num(ci[0]),
        optimisation_gap_ci_hi=_num(ci[1]),
        oracle_reading=oracle.get("reading"),
        truth_remainder=_num((oracle.get("truth") or {}).get("remainder")),
        last_epoch_ev_gain=_num((oracle.get("convergence") or {}).get("last_epoch_ev_gain")),
        converged=(oracle.get("convergence") or {}).get("converged"),
        trained_near_truth=_at(oracle.get("trained_near_truth"), i),
        oracle_encoder_ev=_at(enc.get("explained_variance"), i),
        oracle_encoder_l0=_at(enc.get("l0"), i),
        amortisation_gap=_at(enc.get("amortisation_gap"), i),
        started_ev=_at(started.get("explained_variance"), i),
        started_l0=_at(started.get("l0"), i),
        started_frac_dead=_at(started.get("frac_dead"), i),
        started_cosine_to_start=_at(started.get("cosine_to_start"), i),
        started_near_truth=_at(started.get("near_truth"), i),
        **plane_columns(oracle, i),
    )


def _slot(values, i) -> dict:
    return (values[i] or {}) if isinstance(values, list) and i < len(values) else {}


def plane_columns(oracle: dict, i: int) -> dict:
    """Seed slot i's plane recovery (husai.analysis.plane_recovery): coverage (variance-weighted
    over the truth's planes) of the SAE, the seed's oracle tiling and the rotated reference (mean
    over draws), the SAE's evenness, the share of live latents lying mostly in a plane (SAE,
    reference), the planes with >= 3 latents (SAE, oracle; out of truth_planes), and the started
    run's coverage."""
    pr = _slot(oracle.get("plane_recovery"), i)
    sae, orc, ref = (pr.get(k) or {} for k in ("summary", "oracle", "reference"))
    begun = _slot((oracle.get("started") or {}).get("plane_recovery"), i).get("summary") or {}
    return dict(
        plane_coverage=_num(sae.get("coverage")),
        plane_coverage_oracle=_num(orc.get("coverage")),
        plane_coverage_reference=_num(ref.get("coverage")),
        plane_evenness=_num(sae.get("evenness")),
        in_plane_share=_num(sae.get("in_plane_share")),
        in_plane_share_reference=_num(ref.get("in_plane_share")),
        planes_tiled=sae.get("planes_tiled"),
        planes_tiled_oracle=orc.get("planes_tiled"),
        truth_planes=sae.get("planes"),
        started_plane_coverage=_num(begun.get("coverage")),
    )


def build_table(root: Path, cfg: StudyConfig) -> list[dict]:
    """Rebuild results.csv and results.parquet from the run folders; returns the rows."""
    rows = []
    for run in cfg.runs():
        rows += cell_rows(run.folder(root), run, root)
    cols = list(rows[0]) if rows else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(
            {k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in r.items()}
        )
    atomic_write_bytes(root / "results.csv", buf.getvalue().encode())
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return rows  # parquet is part of the `study` extra; the CSV carries the same table
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    atomic_write_bytes(root / "results.parquet", sink.getvalue().to_pybytes())
    return rows
