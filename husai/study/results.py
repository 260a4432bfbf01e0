"""The results table: one row per SAE, rebuilt from the run folders alone.

Columns: the grid parameters, status/error, every SAE metric of train-sae (mse, explained_variance,
l0, frac_dead, ...), the SAE's Fourier validation (fourier_overlap, frac_pure, coverage, with the
untrained-SAE null), and its cell's cross-seed stability (PW-MCC, mean-max |cos|, shared fraction,
each with null means and z-scores) plus the SAE's own mean PW-MCC to the other seeds. Timing
columns are left out so that a resumed study gives exactly the same table.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from husai.io import atomic_write_bytes, read_json
from husai.sae.architectures import K_ARCHITECTURES
from husai.study.config import StudyConfig

SAE_METRICS = ("mse", "explained_variance", "l0", "frac_dead", "frac_dense", "spliced_acc", "spliced_ce", "delta_ce",
               "ce_loss_recovered_zero", "ce_loss_recovered_mean", "decoder_drift")
FOURIER = ("fourier_overlap", "frac_pure", "coverage", "n_live")
STABILITY = ("pw_mcc_dec", "pw_mcc_enc", "mean_max_abs_cos_dec", "shared_fraction")
NULL_KINDS = ("isotropic", "activation", "subspace", "untrained")


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def cell_rows(folder: Path, run, root: Path) -> list[dict]:
    base = dict(model_seed=run.model_seed, hook=run.hook, architecture=run.cfg.architecture, expansion=run.cfg.expansion,
                k=run.cfg.k if run.cfg.architecture in K_ARCHITECTURES else None,
                l1_coeff=run.cfg.l1_coeff if run.cfg.architecture == "relu" else None,
                l0_coeff=run.cfg.l0_coeff if run.cfg.architecture == "jumprelu" else None,
                run=str(folder.relative_to(root)))
    failed = read_json(folder / "failed.json") if (folder / "failed.json").is_file() else None
    metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    analysis = read_json(folder / "analysis.json") if (folder / "analysis.json").is_file() else {}
    if failed is None and not analysis and not metrics:
        failed = {"error": "not run (study interrupted before this cell)"}
    rows = []
    labels = [s["label"] for s in analysis.get("saes", [])]
    for i, seed in enumerate(run.seeds):
        row = dict(base, seed=seed, status="failed" if failed else "ok", error=(failed or {}).get("error"))
        per = metrics.get("per_seed", {}).get(str(seed), {})
        row.update({m: _num(per.get(m)) for m in SAE_METRICS})
        label = labels[i] if i < len(labels) else f"seed {seed}"
        fr = analysis.get("fourier", {}).get(label, {})
        row.update({m: _num(fr.get(m)) for m in FOURIER})
        row["n_key_covered"] = len(fr["covered"]) if "covered" in fr else None
        row["n_non_key_pure"] = sum(fr["non_key_pure"].values()) if isinstance(fr.get("non_key_pure"), dict) else None
        lt, rec = fr.get("latent_types", {}), fr.get("recovery", {}).get("atoms", {}).get("answer_centroids", {})
        for t in ("plane feature", "answer detector", "input feature", "patch", "other"):
            row[f"n_{t.replace(' ', '_')}"] = lt.get("counts", {}).get(t)
        row["off_span"] = _num(lt.get("mean", {}).get("off_span"))
        row["centroid_mcc"], row["centroid_mcc_random"] = _num(rec.get("mcc")), _num(rec.get("random_reference", {}).get("mcc"))
        row["centroid_mcc_data_points"] = _num(rec.get("data_point_reference", {}).get("mcc"))
        row["hook_answer_share"] = _num(analysis.get("ground_truth", {}).get("variance", {}).get("answer"))
        nu = fr.get("nulls_untrained", {}).get("fourier_overlap", {})
        row["fourier_overlap_null"], row["fourier_overlap_z"] = _num(nu.get("null_mean")), _num(nu.get("z"))
        atom = analysis.get("atom_level", {})
        for m in STABILITY:
            r = atom.get(m, {})
            row[f"{m}_mean"], row[f"{m}_std"] = _num(r.get("mean")), _num(r.get("std"))
            for kind in NULL_KINDS:
                n = r.get("nulls", {}).get(kind, {})
                row[f"{m}_null_{kind}"], row[f"{m}_z_{kind}"] = _num(n.get("null_mean")), _num(n.get("z"))
        M = atom.get("pw_mcc_dec", {}).get("matrix")
        row["pw_mcc_to_other_seeds"] = (sum(M[i][j] for j in range(len(M)) if j != i) / (len(M) - 1)
                                        if M and len(M) > 1 and i < len(M) else None)
        rows.append(row)
    return rows


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
        w.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in r.items()})
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
