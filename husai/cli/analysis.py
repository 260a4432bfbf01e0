"""`husai ground-truth` (what are the model's features at a hook?), `husai fourier` (are the latents
Fourier features?), `husai recover` (do SAEs trained on a user's own activations find the user's
ground truth?) and `husai compare` (do seeds agree?):
argument checks, output claims, tables. The analysis itself is husai.analysis.compare."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import typer

from husai.analysis.compare import compare_saes, fourier_saes, recorded_model
from husai.errors import HusaiError
from husai.interrupts import on_interrupt
from husai.outputs import (
    COMPARE_JSON,
    FOURIER_JSON,
    GROUND_TRUTH_JSON,
    PLOTS,
    RECOVERY_JSON,
    claim_file,
    claim_folder,
    staged_folder,
)


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
    """A rich console; 120 columns when output is not a terminal (logs, pipes), where rich would use
    80."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=120)


def _fmt(x, nd=3) -> str:
    return "-" if x is None else (f"{x:.{nd}f}" if isinstance(x, float) else str(x))


def _ground_truth_command(model, hooks, json_out, overwrite) -> None:
    """Body of `husai ground-truth` (see register)."""
    from rich.table import Table

    from husai.analysis.ground_truth import ground_truth, model_key_frequencies
    from husai.io import write_json
    from husai.sae.activations import model_activations

    if json_out:
        claim_file(json_out, GROUND_TRUTH_JSON, "--json", inputs=[model], overwrite=overwrite)
    keys, report = None, {}
    for hook in hooks or ["blocks.0.hook_resid_post"]:
        acts, info = model_activations(
            model, hook=hook, split="all"
        )  # a bad run folder is a one-line error here
        p, operation = info["p"], info["operation"]
        keys = keys if keys is not None else model_key_frequencies(model, p, operation)
        neurons = info["hook_name"].endswith(
            "mlp.hook_post"
        )  # the columns are neurons: list the single-frequency ones
        report[info["hook_name"]] = ground_truth(
            acts, p, operation, keys, neurons=neurons
        ).to_json()
    t = Table(
        title=f"ground truth (p = {p}, {operation}; key frequencies {keys}); shares of centred "
        "variance"
    )
    t.add_column("hook", no_wrap=True)
    for col in (
        "answer",
        "a",
        "b",
        "conj.",
        "rest",
        "span dim (share)",
        "out planes",
        "in planes",
        "centroid EV",
        "PCA EV 4/16",
    ):
        t.add_column(col)
    for hook, r in report.items():
        v, pl = r["variance"], r["planes"]
        t.add_row(
            hook,
            *(_fmt(v[k], 3) for k in ("answer", "a", "b", "conjugate", "rest")),
            f"{r['span']['dim']} ({_fmt(r['span']['share'], 3)})",
            _fmt(sum(e["share"] for n, e in pl.items() if n.startswith("out")), 3),
            _fmt(sum(e["share"] for n, e in pl.items() if n.startswith("in")), 3),
            _fmt(r["baselines"]["centroid_lookup"]["explained_variance"], 3),
            "/".join(_fmt(r["baselines"]["pca"].get(str(k)), 2) for k in (4, 16)),
        )
    _console().print(t)
    typer.echo(
        "answer: share that is a function of the answer c; a, b: of one input alone; conj.: of the "
        "other combination (a-b for addition); span: of all key-frequency planes; out/in planes: "
        "per key frequency the images of cos/sin of w_k c and of w_k a, w_k b; centroid EV: the "
        "answer-class means as a dictionary used one at a time (L0 = 1)"
    )
    if json_out:
        write_json(json_out, {"model": str(model), "hooks": report})
        typer.echo(f"ground truth written to {json_out}")


def _recover_command(sae_dirs, activations, gt_file, json_out, overwrite) -> None:
    """Body of `husai recover` (see register)."""
    from rich.table import Table

    from husai.analysis.compare import recover_saes
    from husai.io import load_tensors, write_json
    from husai.sae.activations import load_activations

    gt_file = gt_file or activations.with_name(
        activations.name.removesuffix(".safetensors") + ".ground_truth.safetensors"
    )
    if json_out:
        claim_file(
            json_out,
            RECOVERY_JSON,
            "--json",
            inputs=[*sae_dirs, activations, gt_file],
            overwrite=overwrite,
        )
    acts, _ = load_activations(activations)
    if not gt_file.is_file():
        raise HusaiError(
            f"no ground-truth file {gt_file}: give --ground-truth FILE, a safetensors file with "
            "`atoms` [n, d] and/or `plane.NAME` [m, d] tensors"
        )
    span_dim, out = recover_saes(sae_dirs, acts, load_tensors(gt_file, "ground-truth file")[0])
    t = Table(title=f"recovery of the ground truth in {gt_file.name} (data span: {span_dim} dims)")
    for col in (
        "SAE",
        "live",
        "off data span",
        "atom MCC (random; data points)",
        "atom F1 (random)",
        "plane coverage (random)",
        "EV / the atoms as oracle (gap)",
    ):
        t.add_column(col)
    for r in out:
        a = r["atoms"].get("atoms")
        pl = list(r["planes"].values())
        cover = (
            (
                f"{_fmt(sum(e['coverage'] for e in pl) / len(pl))} "
                f"({_fmt(sum(e['random_reference']['coverage'] for e in pl) / len(pl))})"
            )
            if pl
            else "-"
        )
        t.add_row(
            Path(r["path"]).name,
            str(r["n_live"]),
            _fmt(r["off_data_span"]),
            f"{_fmt(a['mcc'])} ({_fmt(a['random_reference']['mcc'])}; "
            f"{_fmt(a['data_point_reference']['mcc'])})"
            if a
            else "-",
            f"{_fmt(a['f1'])} ({_fmt(a['random_reference']['f1'])})" if a else "-",
            cover,
            f"{_fmt(o['sae_explained_variance'])} / {_fmt(o['explained_variance'])} "
            f"({o['gap']:+.3f})"
            if (o := r.get("oracle"))
            else "-",
        )
    _console().print(t)
    typer.echo(
        "compared inside the principal subspace holding 99.9% of the activations' variance; MCC: "
        "Hungarian-matched cosine of decoder rows to the atoms; F1 at cosine >= 0.7; coverage: how "
        "fully the latents lying mostly in a plane fill it; random: as many random directions in "
        "the same span; data points: as many random centred activations (what a data-initialised "
        "SAE starts from; husai.analysis.recovery); oracle: the atoms as a dictionary, the best "
        "code of at most the SAE's L0 atoms an input (husai.analysis.oracle)"
    )
    if json_out:
        write_json(
            json_out, {"activations": str(activations), "ground_truth": str(gt_file), "saes": out}
        )
        typer.echo(f"recovery written to {json_out}")


def _fourier_command(sae_dirs, model, json_out, n_null, overwrite) -> None:
    """Body of `husai fourier` (see register)."""
    from rich.table import Table

    from husai.io import write_json

    if n_null < 1:
        raise HusaiError(f"--n-null must be >= 1, got {n_null}")
    if json_out:
        claim_file(json_out, FOURIER_JSON, "--json", inputs=[*sae_dirs, model], overwrite=overwrite)
    out = fourier_saes(sae_dirs, model, n_null)
    t = Table(
        title=f"Fourier validation (key frequencies {out[0]['key_frequencies']}; "
        f"chance purity {out[0]['chance_purity']:.4f})"
    )
    for c in (
        "SAE",
        "arch",
        "live",
        "overlap",
        "untrained null (z)",
        "pure",
        "covered/key",
        "non-key",
        "dec in key",
        "w-assigned",
    ):
        t.add_column(c)
    for r in out:
        nu, w = r["nulls_untrained"]["fourier_overlap"], r.get("weight_space") or {}
        t.add_row(
            Path(r["path"]).name,
            str(r["architecture"]),
            f"{r['n_live']}/{r['n_latents']}",
            _fmt(r["fourier_overlap"]),
            f"{_fmt(nu['null_mean'])} (z {_fmt(nu['z'], 1)})",
            _fmt(r["frac_pure"]),
            f"{len(r['covered'])}/{len(r['key_frequencies'])}",
            str(sum(r["non_key_pure"].values())),
            _fmt(w.get("union_mean_live")),
            _fmt(w.get("frac_weight_assigned")),
        )
    _console().print(t)
    types = Table(
        title="what the live latents are (husai.analysis.latent_types: rules and thresholds in the "
        "JSON)"
    )
    for c in (
        "SAE",
        "plane feature",
        "answer detector",
        "input feature",
        "patch",
        "other",
        "off span",
        "centroid MCC (random; data points)",
        "out-plane coverage (random)",
    ):
        types.add_column(c)
    for r in out:
        lt, rec = r["latent_types"], r["recovery"]
        cent = rec["atoms"]["answer_centroids"]
        outs = [e for name, e in rec["planes"].items() if name.startswith("out")]
        cover = sum(e["coverage"] for e in outs) / max(1, len(outs))
        cover_ref = sum(e["random_reference"]["coverage"] for e in outs) / max(1, len(outs))
        types.add_row(
            Path(r["path"]).name,
            *(str(n) for n in lt["counts"].values()),
            _fmt(lt["mean"]["off_span"]),
            f"{_fmt(cent['mcc'])} ({_fmt(cent['random_reference']['mcc'])}; "
            f"{_fmt(cent['data_point_reference']['mcc'])})",
            f"{_fmt(cover)} ({_fmt(cover_ref)})",
        )
    _console().print(types)
    typer.echo(
        "overlap: mean Fourier purity of live latents; pure: fraction with purity >= 0.85; "
        "covered: key frequencies with a pure latent; non-key: pure latents on other frequencies; "
        "dec in key: mean fraction of live decoder rows in the key frequencies' activation "
        "subspaces; w-assigned: fraction of live latents with > 50% of their decoder row in one "
        "key frequency's subspace; off span: mean fraction of live decoder rows outside the span "
        "of the key frequencies' output and input planes; centroid MCC: Hungarian-matched cosine "
        "of in-span decoder rows to the answer-class centroids; out-plane coverage: how fully the "
        "latents lying mostly in each output plane fill it (husai.analysis.recovery); random: as "
        "many random directions in the same span; data points: as many random centred activations"
    )
    if json_out:
        write_json(json_out, {"model": str(model), "saes": out})
        typer.echo(f"report written to {json_out}")


def _compare_command(
    sae_dirs, json_out, plots, force, model, activations, threshold, overwrite
) -> None:
    """Body of `husai compare` (see register): validate, compare, write JSON, print."""
    from rich.table import Table

    from husai.io import write_json

    if json_out is None:
        raise HusaiError("compare needs --json OUT (the file the comparison is written to)")
    if not -1 < threshold < 1:
        raise HusaiError(f"--threshold is a cosine and must lie in (-1, 1), got {threshold}")
    if model is not None and activations is not None:
        raise HusaiError("give --model DIR or --activations FILE, not both")
    acts = None
    if activations is not None:
        from husai.sae.activations import load_activations

        acts = load_activations(activations)[0]
    inputs = [*sae_dirs, model or (None if activations else recorded_model(sae_dirs)), activations]
    claim_file(json_out, COMPARE_JSON, "--json", inputs=inputs, overwrite=overwrite)
    if plots is not None:
        claim_folder(plots, PLOTS, "--plots", inputs=inputs, overwrite=overwrite)
    # the plots are drawn into a staging folder that replaces --plots only once all are drawn
    with (
        staged_folder(plots, "--plots") if plots is not None else contextlib.nullcontext() as stage
    ):
        result = compare_saes(sae_dirs, model, threshold, stage, force, acts=acts)
    write_json(json_out, result)
    _print_compare(_console(), result, Table)
    typer.echo(
        f"comparison of {len(result['saes'])} SAEs written to {json_out} "
        f"({result['wall_seconds']:.1f} s)"
    )


def register(app: typer.Typer) -> None:
    @app.command(
        "ground-truth",
        help="What the model's features are at each hook: variance by answer and inputs, Fourier "
        "planes, atoms, baselines.",
    )
    def ground_truth_cmd(
        model: Path = typer.Argument(..., help="A train-model run folder."),
        hooks: Optional[List[str]] = typer.Option(
            None, "--hook", help="Hook(s) to analyse (default: blocks.0.hook_resid_post)."
        ),
        json_out: Optional[Path] = typer.Option(
            None, "--json", help="Write the full ground truth here."
        ),
        threads: int = typer.Option(
            1, "--threads", help="torch CPU threads (1 is fastest for this work)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an earlier ground-truth report at --json."
        ),
    ):
        with (
            _threads(threads),
            on_interrupt(
                f"nothing was written{f' to {json_out}' if json_out else ''}; "
                "run the same command again"
            ),
        ):
            _ground_truth_command(model, hooks, json_out, overwrite)

    @app.command(
        "fourier",
        help="Check every latent against the model's Fourier ground truth (purity, frequency, "
        "coverage).",
    )
    def fourier_cmd(
        sae_dirs: List[Path] = typer.Argument(
            ..., help="SAE folders (SAELens format) or multi-seed output folders."
        ),
        model: Path = typer.Option(
            ..., "--model", help="The model run folder the SAEs were trained on."
        ),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report here."),
        n_null: int = typer.Option(3, "--n-null", help="Untrained-SAE draws for the purity null."),
        threads: int = typer.Option(
            1, "--threads", help="torch CPU threads (1 is fastest for this work)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an earlier Fourier report at --json."
        ),
    ):
        with (
            _threads(threads),
            on_interrupt(
                f"nothing was written{f' to {json_out}' if json_out else ''}; "
                "run the same command again"
            ),
        ):
            _fourier_command(sae_dirs, model, json_out, n_null, overwrite)

    @app.command(
        "recover",
        help="How well SAEs trained on your own activations recover your ground-truth atoms and "
        "planes.",
    )
    def recover_cmd(
        sae_dirs: List[Path] = typer.Argument(
            ..., help="SAE folders (SAELens format) or multi-seed output folders."
        ),
        activations: Path = typer.Option(
            ..., "--activations", help="The activations the SAEs were trained on."
        ),
        ground_truth: Optional[Path] = typer.Option(
            None,
            "--ground-truth",
            help="Safetensors with atoms [n, d] and/or plane.NAME [m, d] "
            "(default: ACTS.ground_truth.safetensors beside the activations).",
        ),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report here."),
        threads: int = typer.Option(
            1, "--threads", help="torch CPU threads (1 is fastest for this work)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an earlier recovery report at --json."
        ),
    ):
        with (
            _threads(threads),
            on_interrupt(
                f"nothing was written{f' to {json_out}' if json_out else ''}; "
                "run the same command again"
            ),
        ):
            _recover_command(sae_dirs, activations, ground_truth, json_out, overwrite)

    @app.command(
        "compare",
        help="Cross-seed stability (PW-MCC, mean-max |cos|, shared fraction, frequency "
        "subspaces) with nulls.",
    )
    def compare_cmd(
        sae_dirs: List[Path] = typer.Argument(
            ..., help="Two or more SAE folders (or multi-seed output folders)."
        ),
        json_out: Optional[Path] = typer.Option(
            None, "--json", help="Write the full comparison here (required)."
        ),
        plots: Optional[Path] = typer.Option(
            None, "--plots", help="Folder for the heatmap and frequency histogram PNGs."
        ),
        force: bool = typer.Option(
            False, "--force", help="Compare SAEs trained on different models or hooks."
        ),
        model: Optional[Path] = typer.Option(
            None, "--model", help="Model run folder (default: the SAEs' metadata.model_path)."
        ),
        activations: Optional[Path] = typer.Option(
            None,
            "--activations",
            help=(
                "The activations the SAEs were trained on (safetensors), for SAEs without a model."
            ),
        ),
        threshold: float = typer.Option(
            0.7, "--threshold", help="Match threshold: shared fraction, reappearance."
        ),
        threads: int = typer.Option(
            1, "--threads", help="torch CPU threads (1 is fastest for this work)."
        ),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an earlier comparison at --json (and --plots)."
        ),
    ):
        with (
            _threads(threads),
            on_interrupt(
                f"nothing was written to {json_out}{' or ' + str(plots) if plots else ''}"
                "; run the same command again"
            ),
        ):
            _compare_command(
                sae_dirs, json_out, plots, force, model, activations, threshold, overwrite
            )


def _ci(c) -> str:
    return f"[{c[0]:.3f}, {c[1]:.3f}]" if c else "-"


def _print_compare(console, res: dict, Table) -> None:
    st = res["stability"]
    t = Table(
        title=f"stability across {len(res['saes'])} SAEs in the data metric "
        f"({st['data_span']['dim']}-d span, live latents): mean over seed pairs [95% CI]"
    )
    from husai.analysis.measures import MEASURES, NULLS

    kinds = list(NULLS)
    for c in ("metric", "value", "chance null", "effect [CI]", *(NULLS[k].label for k in kinds)):
        t.add_column(c)
    levels = dict(
        st["levels"], **{k: v for k, v in st.get("ground_truth", {}).items() if k in MEASURES}
    )
    for m, r in levels.items():
        fit = r.get("fitting", {})
        t.add_row(
            MEASURES[m].short if m in MEASURES else m,
            f"{_fmt(r['value'])} {_ci(r['ci'])}",
            _fmt(fit.get("value")),
            f"{_fmt(fit.get('effect'))} {_ci(fit.get('effect_ci'))}",
            *[_fmt(r["nulls"].get(k, {}).get("value")) for k in kinds],
        )
    console.print(t)
    ref = st["references"].get("shared_init", {}).get("pw_mcc_dec")
    console.print(
        "PW-MCC: Hungarian-matched signed cosine (Song et al. 2025); *symmetrised mean-max |cos|, "
        "what public HUSAI calls PWMCC; shared: encoder and decoder cos both above threshold "
        "(Paulo & Belrose 2025); reappearance: best match above threshold (Gerasimov et al. 2026). "
        "Effect: value - the chance null (matched geometry for atoms), per seed pair; symmetry: "
        "the other seed moved by a shift of the inputs. "
        + (
            f"Shared-init reference (the seeds' initialisations): PW-MCC {_fmt(ref['value'])}. "
            if ref
            else ""
        )
        + f"Raw-coordinate PW-MCC (basis-dependent): {_fmt(st['raw']['pw_mcc_dec']['value'])}."
    )
    if "fourier" in res:
        ft = Table(title=f"Fourier per seed (key frequencies {res['key_frequencies']})")
        for c in (
            "SAE",
            "fourier_overlap (init null)",
            "frac pure",
            "covered",
            "non-key pure",
            "dec in key subspaces",
            "weight-assigned",
        ):
            ft.add_column(c)
        for lab, r in res["fourier"].items():
            w = r.get("weight_space") or {}
            ft.add_row(
                lab,
                f"{_fmt(r['fourier_overlap'])} "
                f"({_fmt(r['nulls_untrained']['fourier_overlap']['null_mean'])})",
                _fmt(r["frac_pure"]),
                str(r["covered"]),
                str(sum(r["non_key_pure"].values())),
                _fmt(w.get("union_mean_live")),
                _fmt(w.get("frac_weight_assigned")),
            )
        console.print(ft)
        for key, how in (
            ("subspaces", "by activation purity"),
            ("subspaces_by_weights", "by decoder weights"),
        ):
            console.print(
                f"frequency subspaces, latents assigned {how} (overlap / atom PW-MCC / null): "
                + "; ".join(
                    f"k={k}: {_fmt(v['overlap_mean'], 2)}/{_fmt(v['atom_pw_mcc_mean'], 2)}/"
                    f"{_fmt(v['null_overlap_mean'], 2)}"
                    for k, v in res["frequency_level"][key].items()
                )
            )
    for w in res["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
