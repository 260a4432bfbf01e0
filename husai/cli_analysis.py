"""`husai fourier` (are the latents Fourier features?) and `husai compare` (do seeds agree?).

Both read SAELens-format folders (cfg.json + sae_weights.safetensors) through husai.sae_io. A folder
holding seed_*/cfg.json (a multi-seed `husai train-sae` output) stands for all its seeds.

compare JSON: saes [{path, label, seed, architecture, d_in, d_sae, hook_name, model_path}], warnings,
  atom_level {pw_mcc_dec, mean_max_abs_cos_dec, pw_mcc_enc, mean_max_abs_cos_enc, shared_fraction:
    {matrix [N][N], mean, std, min, max, n_pairs, nulls {isotropic|activation|subspace|untrained:
    {value, null_mean, null_std, z, exceeds_null_max, n_null}}}}, null_samples {kind: {metric: [..]}},
  moved_from_init {label: {pw_mcc_to_init, mean_row_cos_to_init}}, and with a model: p, key_frequencies,
  fourier {label: fourier_overlap, frac_pure, covered, missing, coverage, non_key_pure,
    pure_per_frequency, nulls_untrained, weight_space}, frequency_level {frequency_sets, subspaces,
  subspaces_by_weights, summary} (means over key frequencies of the per-frequency overlaps).
z compares the mean over seed pairs with the spread of single null pairs.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import List, Optional

import typer

from .errors import HusaiError
from .interrupts import on_interrupt
from .outputs import COMPARE_JSON, FOURIER_JSON, PLOTS, claim_file, claim_folder, staged_folder


def _expand(dirs: list[Path]) -> list[Path]:
    """SAE folders, with a multi-seed output folder replaced by its seed_* subfolders (by seed)."""
    out = []
    for d in dirs:
        if not d.exists():
            raise HusaiError(f"SAE folder not found: {d}")
        if (d / "cfg.json").is_file():
            out.append(d)
            continue
        subs = [s.parent for s in d.glob("seed_*/cfg.json")]
        broken = [s for s in d.glob("seed_*") if s.is_dir() and not (s / "cfg.json").is_file()]
        if broken:
            raise HusaiError(f"{broken[0]} is not an SAE folder: it has no cfg.json")
        if not subs:
            raise HusaiError(f"{d} is not an SAE folder: it has no cfg.json (nor seed_*/cfg.json)")
        out += sorted(subs, key=lambda s: (len(s.name), s.name))
    if len({p.resolve() for p in out}) != len(out):
        raise HusaiError("the same SAE folder is given more than once")
    return out


def _recorded_model(sae_dirs) -> str | None:
    """The model run folder the first SAE was trained on (cfg.json metadata.model_path), if recorded."""
    from .io import read_json

    meta = read_json(_expand(sae_dirs)[0] / "cfg.json", "SAE config").get("metadata")
    path = meta.get("model_path") if isinstance(meta, dict) else None  # a bad cfg.json is load_sae's to report
    return path if isinstance(path, str) else None


def _meta(sae) -> dict:
    return sae.cfg.get("metadata") or {}


def _hook(sae) -> str | None:
    return _meta(sae).get("hook_name") or sae.cfg.get("hook_name")


def _load(dirs: list[Path]) -> list:
    from .sae_io import load_sae

    return [load_sae(d) for d in dirs]


def _check_compatible(saes, dirs, force: bool) -> list[str]:
    """Refuse SAEs that cannot be compared: different d_in always; different model or hook unless --force."""
    d_ins = {s.W_dec.shape[1] for s in saes}
    if len(d_ins) > 1:
        raise HusaiError("SAEs have different d_in (" + ", ".join(f"{d}: {s.W_dec.shape[1]}" for d, s in zip(dirs, saes))
                         + "): their atoms live in different spaces and cannot be compared")
    warnings = []
    for what, get in (("hook", _hook), ("model", lambda s: _meta(s).get("model_path"))):
        vals = {str(get(s)) for s in saes}
        if len(vals) > 1:
            msg = f"SAEs were trained on different {what}s ({', '.join(sorted(vals))})"
            if not force:
                raise HusaiError(msg + "; pass --force to compare them anyway")
            warnings.append(msg + " (compared because of --force)")
    if len({s.W_dec.shape[0] for s in saes}) > 1:
        warnings.append("SAEs have different d_sae: Hungarian matching pairs min(d_sae) latents")
    return warnings


def _model_ctx(model_dir: Path, hook: str, cache: dict) -> dict:
    """{p, acts [p*p, d] at `hook` (row a*p + b), key_freqs} for a model run folder (cached per hook)."""
    if hook in cache:
        return cache[hook]
    from .activations import extract, model_activations
    from .checkpoint import load_model
    from .data import make_tokens
    from .fourier import key_frequencies
    from .io import read_json

    acts, info = model_activations(model_dir, hook=hook, split="all")
    metrics = model_dir / "metrics.json"
    keys = read_json(metrics, "model metrics").get("key_frequencies") if metrics.is_file() else None
    if keys is None:  # not analysed yet: detect from the MLP neurons (Nanda et al. 2023)
        model, _ = load_model(model_dir)
        keys = key_frequencies(extract(model, "blocks.0.mlp.hook_post", make_tokens(info["p"])), info["p"])[0]
    cache[hook] = dict(p=info["p"], acts=acts.double(), key_freqs=[int(k) for k in keys])
    return cache[hook]


def _init_fn_for(sae, acts):
    """init_fn(d_in, d_sae, seed) -> (W_enc [d_in, d_sae], W_dec [d_sae, d_in]) drawing exactly what
    husai's trainer draws for `seed` with this SAE's recorded config: with `init: data` the initial
    decoder rows are centred data points, so the activations are needed (acts [N, d_in], or None:
    then the config's random init is used)."""
    import torch

    from .train_sae import SAETrainConfig, config_from_dict, init_saes

    recorded = _meta(sae).get("husai_config")
    try:
        cfg = config_from_dict(recorded) if isinstance(recorded, dict) else SAETrainConfig(init="random")
    except HusaiError:
        cfg = SAETrainConfig(init="random")
    if acts is None:
        cfg.init = "random"

    def init(d_in: int, d_sae: int, seed: int):
        from dataclasses import replace

        c = replace(cfg, expansion=max(1, d_sae // d_in))
        x = acts.float() if acts is not None else torch.zeros(2, d_in)
        s = init_saes(x, c, [seed]) if c.d_sae(d_in) == d_sae else None
        if s is None:  # d_sae not a multiple of d_in: plain Gao et al. init of that size
            from .sae import StackedSAE
            s = StackedSAE(1, d_in, d_sae).init_weights([seed], torch.zeros(d_in))
        return s.W_enc.detach()[0].double(), s.W_dec.detach()[0].double()
    return init


def _fourier(sae, ctx: dict, n_null: int) -> dict:
    """fourier_report for one SAE plus its untrained-SAE null for fourier_overlap and frac_pure."""
    import torch

    from .nulls import null_stats, untrained_latent_acts
    from .sae_fourier import fourier_report

    x = ctx["acts"]
    if x.shape[1] != sae.W_dec.shape[1]:
        raise HusaiError(f"the SAE's d_in is {sae.W_dec.shape[1]} but the model's activations have {x.shape[1]} dims")
    with torch.no_grad():
        z = sae.encode(x.float()).double()
    rep = fourier_report(z, ctx["p"], ctx["key_freqs"], W_dec=sae.W_dec.double(), resid_acts=x)
    seed = int(_meta(sae).get("seed", 0))
    k = sae.cfg.get("k") if sae.cfg.get("architecture") == "topk" else None
    samples = {"fourier_overlap": [], "frac_pure": []}
    init_fn = _init_fn_for(sae, x)
    for i in range(n_null):
        _, W0 = init_fn(x.shape[1], sae.W_dec.shape[0], seed if i == 0 else 10**6 + i)
        r0 = fourier_report(untrained_latent_acts(x, W0, sae.b_dec, k), ctx["p"], ctx["key_freqs"])
        for m in samples:
            samples[m].append(r0[m])
    rep["nulls_untrained"] = {m: null_stats(rep[m], v) for m, v in samples.items()}
    return rep


@contextlib.contextmanager
def _threads(n: int):
    """Run with n torch threads, then restore. One is fastest here: the work is small LAPACK calls
    and Hungarian matching, and multi-threaded LAPACK on shared cores was measured 10x slower."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _console():
    """A rich console; 120 columns when output is not a terminal (logs, pipes), where rich would use 80."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=120)


def _fmt(x, nd=3) -> str:
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _fourier_command(sae_dirs, model, json_out, n_null, overwrite) -> None:
    """Body of `husai fourier` (see register)."""
    from rich.table import Table

    from .io import write_json

    if n_null < 1:
        raise HusaiError(f"--n-null must be >= 1, got {n_null}")
    if json_out:
        claim_file(json_out, FOURIER_JSON, "--json", inputs=[*sae_dirs, model], overwrite=overwrite)
    dirs = _expand(sae_dirs)
    saes, cache, out = _load(dirs), {}, []
    for d, sae in zip(dirs, saes):
        if _hook(sae) is None:
            raise HusaiError(f"{d}/cfg.json names no hook (metadata.hook_name): cannot rebuild its inputs")
        ctx = _model_ctx(model, _hook(sae), cache)
        out.append(dict(path=str(d), seed=_meta(sae).get("seed"), architecture=sae.cfg.get("architecture"),
                        hook_name=_hook(sae), **_fourier(sae, ctx, n_null)))
    t = Table(title=f"Fourier validation (key frequencies {out[0]['key_frequencies']}; chance purity {out[0]['chance_purity']:.4f})")
    for c in ("SAE", "arch", "live", "overlap", "untrained null (z)", "pure", "covered/key", "non-key", "dec in key", "w-assigned"):
        t.add_column(c)
    for r in out:
        nu, w = r["nulls_untrained"]["fourier_overlap"], r.get("weight_space") or {}
        t.add_row(Path(r["path"]).name, str(r["architecture"]), f"{r['n_live']}/{r['n_latents']}", _fmt(r["fourier_overlap"]),
                  f"{_fmt(nu['null_mean'])} (z {_fmt(nu['z'], 1)})", _fmt(r["frac_pure"]),
                  f"{len(r['covered'])}/{len(r['key_frequencies'])}", str(sum(r["non_key_pure"].values())),
                  _fmt(w.get("union_mean_live")), _fmt(w.get("frac_weight_assigned")))
    _console().print(t)
    typer.echo("overlap: mean Fourier purity of live latents; pure: fraction with purity >= 0.85; covered: key "
               "frequencies with a pure latent; non-key: pure latents on other frequencies; dec in key: mean fraction "
               "of live decoder rows in the key frequencies' activation subspaces; w-assigned: fraction of live "
               "latents with > 50% of their decoder row in one key frequency's subspace")
    if json_out:
        write_json(json_out, {"model": str(model), "saes": out})
        typer.echo(f"report written to {json_out}")


def _compare_command(sae_dirs, json_out, plots, force, model, n_null, threshold, overwrite) -> None:
    """Body of `husai compare` (see register): validate, compare, write JSON, print."""
    from rich.table import Table

    from .io import write_json

    if json_out is None:
        raise HusaiError("compare needs --json OUT (the file the comparison is written to)")
    if n_null < 2:
        raise HusaiError(f"--n-null must be >= 2 (a null needs a spread), got {n_null}")
    if not -1 < threshold < 1:
        raise HusaiError(f"--threshold is a cosine and must lie in (-1, 1), got {threshold}")
    inputs = [*sae_dirs, model or _recorded_model(sae_dirs)]
    claim_file(json_out, COMPARE_JSON, "--json", inputs=inputs, overwrite=overwrite)
    if plots is not None:
        claim_folder(plots, PLOTS, "--plots", inputs=inputs, overwrite=overwrite)
    # the plots are drawn into a staging folder that replaces --plots only once all are drawn
    with staged_folder(plots, "--plots") if plots is not None else contextlib.nullcontext() as stage:
        result = compare_saes(sae_dirs, model, threshold, n_null, stage, force)
    write_json(json_out, result)
    _print_compare(_console(), result, Table)
    typer.echo(f"comparison of {len(result['saes'])} SAEs written to {json_out} ({result['wall_seconds']:.1f} s)")


def compare_saes(sae_dirs: list, model: Path | None = None, threshold: float = 0.7, n_null: int = 10,
                 plots: Path | None = None, force: bool = False) -> dict:
    """Everything `husai compare` computes, as a JSON-ready dict (schema in the module docstring).

    sae_dirs: SAE folders or multi-seed output folders (>= 2 SAEs in all); model: the model run folder
    (default: the SAEs' metadata.model_path; without one, no Fourier analysis nor activation nulls);
    plots: folder for the PNGs, or None. Raises HusaiError on incompatible or bad input.
    """
    import numpy as np

    from .nulls import null_samples, null_stats
    from .stability import frequency_set_stability, pairwise_matrices, pw_mcc, subspace_stability

    t0 = time.perf_counter()
    sae_dirs = [Path(d) for d in sae_dirs]
    model = Path(model) if model is not None else None
    dirs = _expand(sae_dirs)
    if len(dirs) < 2:
        raise HusaiError("compare needs at least two SAEs (got one); give two or more SAE folders")
    saes = _load(dirs)
    warnings = _check_compatible(saes, dirs, force)
    labels = [f"seed {_meta(s)['seed']}" if "seed" in _meta(s) else d.name for d, s in zip(dirs, saes)]
    decs = [s.W_dec.double() for s in saes]
    encs = [s.W_enc.double().T for s in saes]
    atom = pairwise_matrices(decs, encs, threshold)
    if model is None and _meta(saes[0]).get("model_path"):
        model = Path(_meta(saes[0])["model_path"])
        if not (model / "config.json").is_file():  # recorded path moved or deleted: analyse without it
            warnings.append(f"the SAEs' recorded model {model} is not there (pass --model DIR)")
            model = None
    ctx = _model_ctx(model, _hook(saes[0]), {}) if model is not None and _hook(saes[0]) else None
    if model is None or ctx is None:
        warnings.append("no model given (--model) or recorded: activation null and Fourier analysis skipped")
    seeds = [_meta(s).get("seed") for s in saes]
    known = all(isinstance(s, int) for s in seeds)
    init = _init_fn_for(saes[0], ctx["acts"] if ctx else None)
    d_in, d_sae = decs[0].shape[1], min(D.shape[0] for D in decs)
    nulls = null_samples(d_in, d_sae, n_null, ctx["acts"] if ctx else None, init, threshold=threshold,
                         init_seeds=seeds if known else None)
    for m, r in atom.items():
        r["nulls"] = {kind: null_stats(r["mean"], v.get(m, [])) for kind, v in nulls.items()}
    result = dict(saes=[dict(path=str(d), label=lab, seed=_meta(s).get("seed"), architecture=s.cfg.get("architecture"),
                             d_in=s.W_dec.shape[1], d_sae=s.W_dec.shape[0], hook_name=_hook(s),
                             model_path=_meta(s).get("model_path")) for d, s, lab in zip(dirs, saes, labels)],
                  warnings=warnings, threshold=threshold, n_null=n_null, atom_level=atom, null_samples=nulls)
    if known and init is not None:  # how far did training move each decoder? (science brief, section 5)
        result["moved_from_init"] = {lab: dict(pw_mcc_to_init=pw_mcc(D, init(d_in, D.shape[0], s)[1]),
                                               mean_row_cos_to_init=float((D / D.norm(dim=1, keepdim=True) * init(d_in, D.shape[0], s)[1]).sum(1).mean()))
                                     for lab, D, s in zip(labels, decs, seeds)}
    if ctx is not None:
        from .fourier import PURITY_THRESHOLD

        reps = [_fourier(s, ctx, 1) for s in saes]
        # one untrained draw per seed (its own init), pooled: the null distribution for every seed
        for m in ("fourier_overlap", "frac_pure"):
            pool = [r["nulls_untrained"][m]["null_mean"] for r in reps]
            for r in reps:
                r["nulls_untrained"][m] = null_stats(r[m], pool)
        result["p"], result["key_frequencies"] = ctx["p"], ctx["key_freqs"]
        result["fourier"] = {lab: {k: r[k] for k in ("fourier_overlap", "frac_pure", "n_live", "covered", "missing", "coverage",
                                                     "non_key_pure", "pure_per_frequency", "nulls_untrained", "weight_space")
                                   if k in r} for lab, r in zip(labels, reps)}
        freqs = [np.array(r["latents"]["frequency"]) * ((np.array(r["latents"]["purity"]) >= PURITY_THRESHOLD)
                                                       & np.array(r["latents"]["live"])) for r in reps]
        wfreqs = [np.array(r["latents"].get("weight_frequency", [0] * len(r["latents"]["live"]))) * np.array(r["latents"]["live"])
                  for r in reps]
        result["frequency_level"] = dict(
            frequency_sets=frequency_set_stability([set(r["pure_per_frequency"]) for r in reps]),
            subspaces=subspace_stability(decs, freqs, ctx["key_freqs"]),
            subspaces_by_weights=subspace_stability(decs, wfreqs, ctx["key_freqs"]))
        fl = result["frequency_level"]

        def _avg(key, field):
            v = [x[field] for x in fl[key].values() if x[field] is not None]
            return float(np.mean(v)) if v else None
        fl["summary"] = dict(jaccard_mean=fl["frequency_sets"]["jaccard_mean"],
                             subspace_overlap_mean=_avg("subspaces", "overlap_mean"),
                             subspace_overlap_by_weights_mean=_avg("subspaces_by_weights", "overlap_mean"),
                             atom_pw_mcc_by_weights_mean=_avg("subspaces_by_weights", "atom_pw_mcc_mean"),
                             null_overlap_by_weights_mean=_avg("subspaces_by_weights", "null_overlap_mean"))
    result["wall_seconds"] = time.perf_counter() - t0
    if plots is not None:
        from .plots_stability import frequency_histogram, stability_heatmap

        iso = atom["pw_mcc_dec"]["nulls"].get("isotropic", {}).get("null_mean")
        stability_heatmap(atom["pw_mcc_dec"]["matrix"], labels, plots / "pw_mcc_decoder.png", "PW-MCC (decoder)", iso)
        stability_heatmap(atom["mean_max_abs_cos_dec"]["matrix"], labels, plots / "mean_max_abs_cos_decoder.png",
                          "mean-max |cos| (decoder; public HUSAI 'PWMCC')",
                          atom["mean_max_abs_cos_dec"]["nulls"].get("isotropic", {}).get("null_mean"))
        if ctx is not None:
            frequency_histogram([result["fourier"][lab]["pure_per_frequency"] for lab in labels], labels,
                                ctx["key_freqs"], ctx["p"], plots / "frequency_histogram.png")
    return result


def register(app: typer.Typer) -> None:
    @app.command("fourier")
    def fourier_cmd(
        sae_dirs: List[Path] = typer.Argument(..., help="SAE folders (SAELens format) or multi-seed output folders."),
        model: Path = typer.Option(..., "--model", help="The model run folder the SAEs were trained on."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report here."),
        n_null: int = typer.Option(3, "--n-null", help="Untrained-SAE draws for the purity null."),
        threads: int = typer.Option(1, "--threads", help="torch CPU threads (1 is fastest for this work)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier Fourier report at --json."),
    ):
        """Check every latent against the model's Fourier ground truth (purity, frequency, coverage)."""
        with _threads(threads), on_interrupt(f"nothing was written{f' to {json_out}' if json_out else ''}; "
                                             "run the same command again"):
            _fourier_command(sae_dirs, model, json_out, n_null, overwrite)

    @app.command("compare")
    def compare_cmd(
        sae_dirs: List[Path] = typer.Argument(..., help="Two or more SAE folders (or multi-seed output folders)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full comparison here (required)."),
        plots: Optional[Path] = typer.Option(None, "--plots", help="Folder for the heatmap and frequency histogram PNGs."),
        force: bool = typer.Option(False, "--force", help="Compare SAEs trained on different models or hooks."),
        model: Optional[Path] = typer.Option(None, "--model", help="Model run folder (default: the SAEs' metadata.model_path)."),
        n_null: int = typer.Option(10, "--n-null", help="Dictionary pairs per null kind."),
        threshold: float = typer.Option(0.7, "--threshold", help="Shared-fraction cosine threshold (Paulo & Belrose)."),
        threads: int = typer.Option(1, "--threads", help="torch CPU threads (1 is fastest for this work)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier comparison at --json (and --plots)."),
    ):
        """Cross-seed stability (PW-MCC, mean-max |cos|, shared fraction, frequency subspaces) with nulls."""
        with _threads(threads), on_interrupt(f"nothing was written to {json_out}{' or ' + str(plots) if plots else ''}"
                                             "; run the same command again"):
            _compare_command(sae_dirs, json_out, plots, force, model, n_null, threshold, overwrite)


def _print_compare(console, res: dict, Table) -> None:
    short = {"isotropic": "iso", "activation": "act-cov", "subspace": "act-sub", "untrained": "init"}
    kinds = [k for k in short if k in res["null_samples"]]
    t = Table(title=f"stability across {len(res['saes'])} SAEs: mean ± std over pairs; null mean (z)")
    for c in ["metric", "value"] + [short[k] for k in kinds]:
        t.add_column(c)
    names = {"pw_mcc_dec": "PW-MCC dec", "pw_mcc_enc": "PW-MCC enc", "mean_max_abs_cos_dec": "max|cos| dec*",
             "mean_max_abs_cos_enc": "max|cos| enc*", "shared_fraction": f"shared >{res['threshold']}"}
    for m, r in res["atom_level"].items():
        t.add_row(names.get(m, m), f"{r['mean']:.3f}±{r['std']:.3f}",
                  *[f"{_fmt(r['nulls'][k]['null_mean'])} ({_fmt(r['nulls'][k]['z'], 1)})" for k in kinds])
    console.print(t)
    console.print("PW-MCC: Hungarian-matched signed cosine (Song et al. 2025); *symmetrised mean-max |cos|, "
                  "what public HUSAI calls PWMCC; shared: encoder and decoder cos both above threshold (Paulo & "
                  "Belrose 2025). Nulls: iso = random unit vectors, act-cov = random directions with the activations' "
                  "covariance, act-sub = uniform in their 99%-variance subspace, init = the SAEs' untrained inits.")
    if "fourier" in res:
        ft = Table(title=f"Fourier per seed (key frequencies {res['key_frequencies']})")
        for c in ("SAE", "fourier_overlap (init null)", "frac pure", "covered", "non-key pure", "dec in key subspaces",
                  "weight-assigned"):
            ft.add_column(c)
        for lab, r in res["fourier"].items():
            w = r.get("weight_space") or {}
            ft.add_row(lab, f"{_fmt(r['fourier_overlap'])} ({_fmt(r['nulls_untrained']['fourier_overlap']['null_mean'])})",
                       _fmt(r["frac_pure"]), str(r["covered"]), str(sum(r["non_key_pure"].values())),
                       _fmt(w.get("union_mean_live")), _fmt(w.get("frac_weight_assigned")))
        console.print(ft)
        for key, how in (("subspaces", "by activation purity"), ("subspaces_by_weights", "by decoder weights")):
            console.print(f"frequency subspaces, latents assigned {how} (overlap / atom PW-MCC / null): " + "; ".join(
                f"k={k}: {_fmt(v['overlap_mean'], 2)}/{_fmt(v['atom_pw_mcc_mean'], 2)}/{_fmt(v['null_overlap_mean'], 2)}"
                for k, v in res["frequency_level"][key].items()))
    for w in res["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
