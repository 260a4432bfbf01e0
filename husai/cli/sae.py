"""`husai train-sae` (husai.sae.run does the work) and `husai extract-activations`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import typer

from husai.errors import HusaiError
from husai.outputs import ACTIVATIONS, claim_file
from husai.sae.family import families, family
from husai.sae.run import run_train_sae


def _device(name: str) -> str:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise HusaiError(f"unknown --device {name!r} (use cpu, cuda, cuda:N or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HusaiError(f"--device {name}: CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise HusaiError(f"--device {name}: MPS is not available on this machine")
    return name


def _settings(items: list[str]) -> dict:
    """--set KEY=VALUE items -> {key: value}, each VALUE read as YAML (8 -> int, 0.5 -> float,
    null)."""
    import yaml

    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise HusaiError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise HusaiError(f"--set {key.strip()}: {text!r} is not a YAML value") from None
    return out


def register(app: typer.Typer) -> None:
    @app.command("train-sae")
    def train_sae_cmd(
        save_dir: Path = typer.Option(
            ..., "--save-dir", help="Output folder (SAELens format + metrics.json)."
        ),
        transformer_checkpoint: Optional[Path] = typer.Option(None, help="husai model run folder."),
        activations: Optional[Path] = typer.Option(
            None, help="Safetensors file with one 2-D tensor [n, d] (instead of a model)."
        ),
        config: Optional[Path] = typer.Option(
            None, help="YAML config (keys of husai.sae.config.SAETrainConfig)."
        ),
        layer: Optional[int] = typer.Option(
            None, help="Shorthand for --hook blocks.L.hook_resid_post (default 0)."
        ),
        hook: Optional[str] = typer.Option(None, help="Any hook name of the model."),
        split: str = typer.Option(
            "all", help="Train on all p^2 inputs, or only the train or test split."
        ),
        seed: int = typer.Option(42, help="SAE seed (ignored when --seeds is given)."),
        seeds: Optional[str] = typer.Option(
            None, help="Comma-separated seeds trained together, e.g. 42,123,456."
        ),
        architecture: Optional[str] = typer.Option(
            None, help=f"{', '.join(families())} (husai.sae.family)."
        ),
        epochs: Optional[int] = typer.Option(None),
        batch_size: Optional[int] = typer.Option(None),
        lr: Optional[float] = typer.Option(None),
        k: Optional[int] = typer.Option(None, help="TopK family: active latents."),
        expansion: Optional[int] = typer.Option(
            None, help="Width as d_sae = expansion x d_in (unless --latents)."
        ),
        latents: Optional[int] = typer.Option(
            None, help="Width as d_sae itself (comparable across hooks; wins over --expansion)."
        ),
        target_l0: Optional[float] = typer.Option(
            None,
            help="relu, jumprelu: the L0 to reach; the penalty weight that "
            "gives it is found first, from --l1-coeff / the config's weight.",
        ),
        l1_coeff: Optional[float] = typer.Option(None),
        set_: list[str] = typer.Option(
            [],
            "--set",
            help="KEY=VALUE: any config key, the family's included "
            "(e.g. --set aux_coeff=0.05); VALUE is read as YAML. Repeatable.",
        ),
        device: str = typer.Option("cpu"),
        wandb: bool = typer.Option(False, help="Log to Weights & Biases."),
        quiet: bool = typer.Option(False, help="No progress bar."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an earlier train-sae output in --save-dir."
        ),
    ):
        """Train sparse autoencoders (one per seed, all in one pass) on a model's activations."""
        from husai.locks import exclusive
        from husai.sae.config import config_from_dict, read_config_keys
        from husai.sae.train import parse_seeds

        # the keys the file sets, not a filled-in config: a key it leaves out takes the default of
        # the family the options end with (relu's own lr, not topk's)
        written = read_config_keys(config) if config is not None else {}
        before = written.get("architecture", "topk")
        overrides = dict(
            architecture=architecture,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            k=k,
            expansion=expansion,
            latents=latents,
            target_l0=target_l0,
            l1_coeff=l1_coeff,
        )
        flat = dict(written, **{key: v for key, v in overrides.items() if v is not None})
        if architecture is not None and architecture != before:  # the new family's defaults
            flat = {key: v for key, v in flat.items() if key not in family(before).keys()}
        cfg = config_from_dict(dict(flat, **_settings(set_)), "train-sae options")
        seed_list = parse_seeds(seeds) if seeds is not None else [seed]
        with exclusive(save_dir, "husai train-sae", "--save-dir"):  # one writer per output folder
            m = run_train_sae(
                cfg,
                save_dir,
                seed_list,
                transformer_checkpoint,
                activations,
                layer,
                hook,
                split,
                _device(device),
                wandb,
                progress=not quiet,
                overwrite=overwrite,
            )
        mean = m["mean"]
        typer.echo(
            f"saved {len(seed_list)} SAE(s) to {save_dir}: EV {mean['explained_variance']:.4f}  "
            f"L0 {mean['l0']:.1f}  dead {mean['frac_dead']:.2%}  ({m['wall_seconds']:.1f}s)"
        )

    @app.command("extract-activations")
    def extract_cmd(
        transformer_checkpoint: Path = typer.Option(..., help="husai model run folder."),
        out: Path = typer.Option(..., help="Safetensors file to write."),
        layer: Optional[int] = typer.Option(
            None, help="Shorthand for --hook blocks.L.hook_resid_post (default 0)."
        ),
        hook: Optional[str] = typer.Option(None, help="Any hook name of the model."),
        split: str = typer.Option("all", help="all (p^2 rows, row a*p+b), train or test."),
        device: str = typer.Option("cpu"),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Replace an earlier activation file at --out."
        ),
    ):
        """Save the activations at the `=` position of one hook to a safetensors file."""
        from husai.sae.activations import model_activations, save_activations

        claim_file(out, ACTIVATIONS, "--out", inputs=(transformer_checkpoint,), overwrite=overwrite)
        acts, info = model_activations(transformer_checkpoint, layer, hook, split, _device(device))
        save_activations(out, acts, info)
        typer.echo(
            f"saved activations {list(acts.shape)} of {info['hook_name']} ({split}) to {out}"
        )
