"""The comparison of several SAEs: cross-seed stability with nulls, and each SAE's latents against
the model's Fourier ground truth (what `husai compare` and `husai fourier` compute, and each study
cell).

SAEs are read as SAELens-format folders (cfg.json + sae_weights.safetensors) through
husai.sae.checkpoint. A folder holding seed_*/cfg.json (a multi-seed `husai train-sae` output)
stands for all its seeds.

compare JSON: saes [{path, label, seed, architecture, d_in, d_sae, hook_name, model_path}],
  warnings, threshold, stability (husai.analysis.seed_stability: every level in the data metric with
  its CI, nulls, per-latent reappearance, shared-init and trajectory references, the raw figures),
  moved_from_init {label: {pw_mcc_to_init, mean_row_cos_to_init}}, and with a model: p,
  key_frequencies, ground_truth (the hook's, husai.analysis.ground_truth's to_json),
  fourier {label: fourier_overlap,
    frac_pure, covered, missing, coverage, non_key_pure, pure_per_frequency, nulls_untrained,
    weight_space, latent_types {thresholds, n_live, counts, examples, mean}
    (husai.analysis.latent_types, without the per-latent list), recovery {atoms, planes, ...}
    (husai.analysis.recovery)},
  frequency_level {frequency_sets, subspaces, subspaces_by_weights, summary} (means over key
  frequencies of the per-frequency overlaps; decoder rows in the data span's coordinates).
"""

from __future__ import annotations

import time
from pathlib import Path

from husai.errors import HusaiError
from husai.timing import stage


def expand_sae_dirs(dirs: list[Path]) -> list[Path]:
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


def recorded_model(sae_dirs) -> str | None:
    """The model run folder the first SAE was trained on (cfg.json metadata.model_path), if
    recorded."""
    from husai.io import read_json

    meta = read_json(expand_sae_dirs(sae_dirs)[0] / "cfg.json", "SAE config").get("metadata")
    path = (
        meta.get("model_path") if isinstance(meta, dict) else None
    )  # a bad cfg.json is load_sae's to report
    return path if isinstance(path, str) else None


def metadata(sae) -> dict:
    return sae.cfg.get("metadata") or {}


def hook_of(sae) -> str | None:
    return metadata(sae).get("hook_name") or sae.cfg.get("hook_name")


def load_sae_folders(dirs: list[Path]) -> list:
    from husai.sae.checkpoint import load_sae

    return [load_sae(d) for d in dirs]


def check_compatible(saes, dirs, force: bool) -> list[str]:
    """Refuse SAEs that cannot be compared: different d_in always; different model or hook unless
    --force."""
    d_ins = {s.W_dec.shape[1] for s in saes}
    if len(d_ins) > 1:
        raise HusaiError(
            "SAEs have different d_in ("
            + ", ".join(f"{d}: {s.W_dec.shape[1]}" for d, s in zip(dirs, saes))
            + "): their atoms live in different spaces and cannot be compared"
        )
    warnings = []
    for what, get in (("hook", hook_of), ("model", lambda s: metadata(s).get("model_path"))):
        vals = {str(get(s)) for s in saes}
        if len(vals) > 1:
            msg = f"SAEs were trained on different {what}s ({', '.join(sorted(vals))})"
            if not force:
                raise HusaiError(msg + "; pass --force to compare them anyway")
            warnings.append(msg + " (compared because of --force)")
    if len({s.W_dec.shape[0] for s in saes}) > 1:
        warnings.append(
            "SAEs have different d_sae: Hungarian matching pairs the smaller number of live latents"
        )
    return warnings


_CONTEXTS: dict = {}
"""model_context's cache, for the life of the process: a study worker analyses many cells of one
model and hook, and the hook's ground truth took ~6 s per cell at mlp.hook_post (profiled)."""


def model_context(model_dir: Path, hook: str, cache: dict | None = None) -> dict:
    """{p, acts [p*p, d] at `hook` (row a*p + b), key_freqs} for a model run folder, cached per
    model (its path and weights file's modification time) and hook, with the ground truth once
    computed."""
    if cache is None:
        weights = Path(model_dir) / "model.safetensors"
        key = (
            str(Path(model_dir).resolve()),
            weights.stat().st_mtime_ns if weights.is_file() else None,
            hook,
        )
        if key not in _CONTEXTS:
            if len(_CONTEXTS) >= 4:  # activations of [p^2, 512] float64 are 52 MB
                _CONTEXTS.pop(next(iter(_CONTEXTS)))
            _CONTEXTS[key] = model_context(model_dir, hook, {})
        return _CONTEXTS[key]
    if hook in cache:
        return cache[hook]
    from husai.analysis.ground_truth import model_key_frequencies
    from husai.sae.activations import model_activations

    acts, info = model_activations(model_dir, hook=hook, split="all")
    # the additive key frequencies, which fourier_report's purity uses: recorded, else from the MLP
    # neurons
    keys = model_key_frequencies(model_dir, info["p"], "add")
    cache[hook] = dict(
        p=info["p"],
        operation=info["operation"],
        hook=info["hook_name"],
        acts=acts.double(),
        key_freqs=[int(k) for k in keys],
    )
    return cache[hook]


def hook_ground_truth(ctx: dict):
    """The ground truth of the context's hook (husai.analysis.ground_truth), computed once per
    context. For (a * b) mod p the key frequencies are those of the discrete logarithm, found on its
    grid."""
    from husai.analysis.ground_truth import ground_truth

    if "ground_truth" not in ctx:
        keys = None if ctx.get("operation") == "mul" else ctx["key_freqs"]
        neurons = str(ctx.get("hook", "")).endswith(
            "mlp.hook_post"
        )  # the columns are neurons: atoms too
        ctx["ground_truth"] = ground_truth(
            ctx["acts"], ctx["p"], ctx.get("operation", "add"), keys, neurons=neurons
        )
    return ctx["ground_truth"]


def init_fn_for(sae, acts, medians: dict | None = None):
    """init_fn(d_in, d_sae, seed) -> (W_enc [d_in, d_sae], W_dec [d_sae, d_in]) drawing exactly what
    husai's trainer draws for `seed` with this SAE's recorded config: with `init: data` the initial
    decoder rows are centred data points, so the activations are needed (acts [N, d_in], or None:
    then the config's random init is used). medians: a dict to keep the init's b_dec in (it depends
    on the data alone: a model context's dict shares it across SAEs)."""
    import torch

    from husai.sae.config import SAETrainConfig, config_from_dict
    from husai.sae.train import init_saes, initial_b_dec

    recorded = metadata(sae).get("husai_config")
    try:
        cfg = (
            config_from_dict(recorded, record=True)
            if isinstance(recorded, dict)
            else SAETrainConfig(init="random")
        )
    except HusaiError:
        cfg = SAETrainConfig(init="random")
    if acts is None:
        cfg.init = "random"

    x = acts.float() if acts is not None else None
    b_dec = {} if medians is None else medians  # one geometric median for every seed

    def init(d_in: int, d_sae: int, seed: int):
        from dataclasses import replace

        data = x if x is not None else torch.zeros(2, d_in)
        if d_in not in b_dec:
            b_dec[d_in] = initial_b_dec(data)
        s = init_saes(data, replace(cfg, latents=d_sae), [seed], b_dec=b_dec[d_in])
        return s.W_enc.detach()[0].double(), s.W_dec.detach()[0].double()

    return init


def fourier_with_null(sae, ctx: dict, n_null: int) -> dict:
    """fourier_report for one SAE plus its untrained-SAE null for fourier_overlap and frac_pure."""
    import torch

    from husai.analysis.latent_fourier import fourier_report
    from husai.analysis.latent_types import latent_types
    from husai.analysis.nulls import null_stats, untrained_latent_acts
    from husai.analysis.recovery import hook_recovery

    x = ctx["acts"]
    if x.shape[1] != sae.W_dec.shape[1]:
        raise HusaiError(
            f"the SAE's d_in is {sae.W_dec.shape[1]} but the model's activations have "
            f"{x.shape[1]} dims"
        )
    with torch.no_grad():
        z = sae.encode(x.float()).double()
    rep = fourier_report(z, ctx["p"], ctx["key_freqs"], W_dec=sae.W_dec.double(), resid_acts=x)
    gt = hook_ground_truth(ctx)
    rep["latent_types"] = latent_types(z, sae.W_dec.double(), gt)
    neuron_atoms = None
    if gt.neurons:
        neuron_atoms = torch.eye(x.shape[1], dtype=torch.float64)[
            [e["index"] for e in gt.neurons["neurons"]]
        ]
    rep["recovery"] = hook_recovery(sae.W_dec.double(), (z != 0).any(0), gt, neuron_atoms, data=x)
    seed = int(metadata(sae).get("seed", 0))
    k = sae.cfg.get("k") if sae.cfg.get("architecture") == "topk" else None
    samples = {"fourier_overlap": [], "frac_pure": []}
    init_fn = init_fn_for(sae, x, ctx.setdefault("init_b_dec", {}))
    for i in range(n_null):
        _, W0 = init_fn(x.shape[1], sae.W_dec.shape[0], seed if i == 0 else 10**6 + i)
        r0 = fourier_report(untrained_latent_acts(x, W0, sae.b_dec, k), ctx["p"], ctx["key_freqs"])
        for m in samples:
            samples[m].append(r0[m])
    rep["nulls_untrained"] = {m: null_stats(rep[m], v) for m, v in samples.items()}
    return rep


def fourier_saes(sae_dirs: list, model: Path, n_null: int = 3) -> list[dict]:
    """What `husai fourier` reports: per SAE its path, seed, architecture, hook and
    fourier_with_null (the latents against the model's Fourier ground truth, with the untrained
    null)."""
    dirs = expand_sae_dirs([Path(d) for d in sae_dirs])
    cache, out = {}, []
    for d, sae in zip(dirs, load_sae_folders(dirs)):
        if hook_of(sae) is None:
            raise HusaiError(
                f"{d}/cfg.json names no hook (metadata.hook_name): cannot rebuild its inputs"
            )
        ctx = model_context(Path(model), hook_of(sae), cache)
        out.append(
            dict(
                path=str(d),
                seed=metadata(sae).get("seed"),
                architecture=sae.cfg.get("architecture"),
                hook_name=hook_of(sae),
                **fourier_with_null(sae, ctx, n_null),
            )
        )
    return out


def recover_saes(sae_dirs: list, acts, tensors: dict) -> tuple[int, list[dict]]:
    """What `husai recover` reports: per SAE trained on the user's activations acts [N, d], its
    recovery of the user's ground truth (tensors: `atoms` and/or `plane.NAME`,
    husai.analysis.recovery) and the mean share of its live decoder rows outside the data's
    99.9%-variance span (off_data_span). -> (span dim, one dict per SAE)."""
    import torch

    from husai.analysis.recovery import file_ground_truth, recovery

    span, atoms, planes = file_ground_truth(acts, tensors)
    dirs = expand_sae_dirs([Path(d) for d in sae_dirs])
    out = []
    for d, sae in zip(dirs, load_sae_folders(dirs)):
        if sae.W_dec.shape[1] != acts.shape[1]:
            raise HusaiError(
                f"{d}: the SAE's d_in is {sae.W_dec.shape[1]} but the activations have "
                f"{acts.shape[1]} dims"
            )
        with torch.no_grad():
            live = (sae.encode(acts.float()) != 0).any(0)
        W = sae.W_dec.double()[live]
        off = (
            float((1 - (W @ span).pow(2).sum(1) / W.pow(2).sum(1).clamp_min(1e-30)).mean())
            if len(W)
            else None
        )
        out.append(
            dict(
                path=str(d),
                seed=metadata(sae).get("seed"),
                architecture=sae.cfg.get("architecture"),
                off_data_span=off,
                **recovery(sae.W_dec.double(), live, span, atoms, planes, data=acts),
            )
        )
        if "atoms" in atoms:
            out[-1]["oracle"] = file_oracle(sae, acts, atoms["atoms"])
    return int(span.shape[1]), out


def file_oracle(sae, acts, atoms) -> dict:
    """The user's atoms [n, d] as an oracle dictionary (husai.analysis.oracle) at the SAE's L0 on
    acts [N, d]: its best non-negative code of at most round(L0) atoms an input, b_dec the data
    mean, against the SAE's own EV; gap = oracle EV - SAE EV."""
    import torch

    from husai.analysis.oracle import score

    x = acts.double()
    with torch.no_grad():
        z = sae.encode(acts.float())
        ev = 1.0 - float((sae.decode(z).double() - x).pow(2).sum()) / float(
            (x - x.mean(0)).pow(2).sum()
        )
    k = max(1, round(float((z != 0).sum(1).double().mean())))
    o = score(x - x.mean(0), atoms.double(), k)
    return dict(
        k=k,
        sae_explained_variance=ev,
        explained_variance=o["explained_variance"],
        l0=o["l0"],
        gap=o["explained_variance"] - ev,
    )


def compare_saes(
    sae_dirs: list,
    model: Path | None = None,
    threshold: float = 0.7,
    plots: Path | None = None,
    force: bool = False,
    acts=None,
) -> dict:
    """Everything `husai compare` computes, as a JSON-ready dict (schema in the module docstring).

    sae_dirs: SAE folders or multi-seed output folders (>= 2 SAEs in all); model: the model run
    folder (default: the SAEs' metadata.model_path); acts [N, d_in]: the activations, when there is
    no model (then no Fourier analysis, ground-truth level nor symmetry null);
    plots: folder for the PNGs, or None. Raises HusaiError on incompatible or bad input.
    """
    import numpy as np

    from husai.analysis.seed_stability import sae_stability
    from husai.analysis.stability import frequency_set_stability, pw_mcc, subspace_stability

    t0 = time.perf_counter()
    sae_dirs = [Path(d) for d in sae_dirs]
    model = Path(model) if model is not None else None
    dirs = expand_sae_dirs(sae_dirs)
    if len(dirs) < 2:
        raise HusaiError("compare needs at least two SAEs (got one); give two or more SAE folders")
    saes = load_sae_folders(dirs)
    warnings = check_compatible(saes, dirs, force)
    labels = [
        f"seed {metadata(s)['seed']}" if "seed" in metadata(s) else d.name
        for d, s in zip(dirs, saes)
    ]
    decs = [s.W_dec.double() for s in saes]
    if model is None and metadata(saes[0]).get("model_path"):
        model = Path(metadata(saes[0])["model_path"])
        if not (
            model / "config.json"
        ).is_file():  # recorded path moved or deleted: analyse without it
            warnings.append(f"the SAEs' recorded model {model} is not there (pass --model DIR)")
            model = None
    with stage("activations"):
        ctx = (
            model_context(model, hook_of(saes[0]))
            if model is not None and hook_of(saes[0])
            else None
        )
    if ctx is None and acts is None:
        raise HusaiError(
            "stability is measured in the data's own geometry, which needs the activations: give "
            "the model (--model DIR, or SAEs that record it) or the activations "
            "(--activations FILE)"
        )
    if ctx is not None:
        acts = ctx["acts"]
    elif model is None:
        warnings.append(
            "no model given (--model) or recorded: Fourier analysis and the symmetry null skipped"
        )
    seeds = [metadata(s).get("seed") for s in saes]
    known = all(isinstance(s, int) for s in seeds)
    init = init_fn_for(saes[0], acts, ctx.setdefault("init_b_dec", {}) if ctx is not None else None)
    d_in = decs[0].shape[1]
    if acts.shape[1] != d_in:
        raise HusaiError(f"the SAEs' d_in is {d_in} but the activations have {acts.shape[1]} dims")
    with stage("ground_truth"):
        gt = hook_ground_truth(ctx) if ctx is not None else None
    with stage("stability"):
        stability = sae_stability(
            saes,
            labels,
            acts,
            dirs,
            seeds,
            init if known else None,
            grid_p=ctx["p"] if ctx is not None and ctx.get("operation", "add") == "add" else None,
            gt=gt,
            operation=ctx.get("operation", "add") if ctx else "add",
            threshold=threshold,
        )
    result = dict(
        saes=[
            dict(
                path=str(d),
                label=lab,
                seed=metadata(s).get("seed"),
                architecture=s.cfg.get("architecture"),
                d_in=s.W_dec.shape[1],
                d_sae=s.W_dec.shape[0],
                hook_name=hook_of(s),
                model_path=metadata(s).get("model_path"),
            )
            for d, s, lab in zip(dirs, saes, labels)
        ],
        warnings=warnings,
        threshold=threshold,
        stability=stability,
    )
    with stage("stability"):
        if known:  # how far did training move each decoder? (docs/methods.md, "Nulls")
            result["moved_from_init"] = {}
            for lab, D, s in zip(labels, decs, seeds):
                D0 = init(d_in, D.shape[0], s)[1]
                cos = (D / D.norm(dim=1, keepdim=True) * D0).sum(1)
                result["moved_from_init"][lab] = dict(
                    pw_mcc_to_init=pw_mcc(D, D0), mean_row_cos_to_init=float(cos.mean())
                )
    if ctx is not None:
        from husai.analysis.data_span import data_span
        from husai.analysis.nulls import null_stats
        from husai.model.fourier import PURITY_THRESHOLD

        with stage("ground_truth"):
            reps = [fourier_with_null(s, ctx, 1) for s in saes]
            # one untrained draw per seed (its own init), pooled: the null of every seed
            for m in ("fourier_overlap", "frac_pure"):
                pool = [r["nulls_untrained"][m]["null_mean"] for r in reps]
                for r in reps:
                    r["nulls_untrained"][m] = null_stats(r[m], pool)
            result["p"], result["key_frequencies"] = ctx["p"], ctx["key_freqs"]
            result["ground_truth"] = hook_ground_truth(ctx).to_json()
            result["fourier"] = {
                lab: {
                    k: r[k]
                    for k in (
                        "fourier_overlap",
                        "frac_pure",
                        "n_live",
                        "covered",
                        "missing",
                        "coverage",
                        "non_key_pure",
                        "pure_per_frequency",
                        "nulls_untrained",
                        "weight_space",
                    )
                    if k in r
                }
                for lab, r in zip(labels, reps)
            }
            # the per-latent list is husai fourier's; here the summary
            for lab, r in zip(labels, reps):
                result["fourier"][lab]["latent_types"] = {
                    k: v for k, v in r["latent_types"].items() if k != "latents"
                }
                result["fourier"][lab]["recovery"] = r["recovery"]
        with stage("stability"):
            freqs = [
                np.array(r["latents"]["frequency"])
                * (
                    (np.array(r["latents"]["purity"]) >= PURITY_THRESHOLD)
                    & np.array(r["latents"]["live"])
                )
                for r in reps
            ]
            wfreqs = [
                np.array(r["latents"].get("weight_frequency", [0] * len(r["latents"]["live"])))
                * np.array(r["latents"]["live"])
                for r in reps
            ]
            span = data_span(acts)
            # the data metric: off-span drift is not a feature
            in_span = [span.coords(D) for D in decs]
            result["frequency_level"] = dict(
                frequency_sets=frequency_set_stability(
                    [set(r["pure_per_frequency"]) for r in reps]
                ),
                subspaces=subspace_stability(in_span, freqs, ctx["key_freqs"]),
                subspaces_by_weights=subspace_stability(in_span, wfreqs, ctx["key_freqs"]),
            )
            fl = result["frequency_level"]

            def _avg(key, field):
                v = [x[field] for x in fl[key].values() if x[field] is not None]
                return float(np.mean(v)) if v else None

            fl["summary"] = dict(
                jaccard_mean=fl["frequency_sets"]["jaccard_mean"],
                subspace_overlap_mean=_avg("subspaces", "overlap_mean"),
                subspace_overlap_by_weights_mean=_avg("subspaces_by_weights", "overlap_mean"),
                atom_pw_mcc_by_weights_mean=_avg("subspaces_by_weights", "atom_pw_mcc_mean"),
                null_overlap_by_weights_mean=_avg("subspaces_by_weights", "null_overlap_mean"),
            )
    result["wall_seconds"] = time.perf_counter() - t0
    if plots is not None:
        with stage("figures"):
            from husai.analysis.plots import frequency_histogram, stability_heatmap

            lv = stability["levels"]
            for m, fname, title in (
                ("pw_mcc_dec", "pw_mcc_decoder.png", "PW-MCC (decoder, data metric)"),
                (
                    "mean_max_abs_cos_dec",
                    "mean_max_abs_cos_decoder.png",
                    "mean-max |cos| (decoder, data metric; public HUSAI 'PWMCC')",
                ),
            ):
                if m in lv:
                    null = lv[m].get("fitting", {}).get("value")
                    stability_heatmap(
                        [[np.nan if v is None else v for v in r] for r in lv[m]["matrix"]],
                        labels,
                        plots / fname,
                        title,
                        null,
                        null_name="fitting null",
                    )
            if ctx is not None:
                frequency_histogram(
                    [result["fourier"][lab]["pure_per_frequency"] for lab in labels],
                    labels,
                    ctx["key_freqs"],
                    ctx["p"],
                    plots / "frequency_histogram.png",
                )
    return result
