"""The study config: a grid of SAE runs over model seeds, hooks, architectures and their knobs.

    model:                      # TrainConfig overrides on top of a preset
      preset: fast
      seeds: [0]                # grid axis: one model per seed
    hooks: [blocks.0.hook_resid_post]      # grid axis
    seeds: [42, 123, 456, 789, 1011]       # SAE seeds, trained together by the multi-seed trainer
    saes:                       # each entry: SAETrainConfig keys; a list value is a grid axis
      - {architecture: topk, expansion: [16], k: [32]}
      - {architecture: relu, expansion: 16, l1_coeff: [0.01, 0.03]}
    stability:
      threshold: 0.7
      controls: [memorised, untrained]
      control_seeds: 3
      control_cells: [{architecture: topk, latents: 512, k: 32}]   # [] or absent: every cell

Everything is validated before any work starts; errors name the key.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from husai.errors import HusaiError
from husai.model.train import PRESETS, TrainConfig
from husai.sae.config import SAETrainConfig, all_keys, config_from_dict

TOP_KEYS = ("model", "hooks", "seeds", "saes", "stability", "oracle")
ORACLE_KEYS = ("score", "encoder", "started", "cells")
"""oracle.score: each cell's SAEs against the oracle dictionary at their width and L0, the
optimisation gap and its reading; oracle.encoder: also the oracle as a frozen decoder with the
cell's own encoder trained on it; oracle.started: also the cell's recipe started at the oracle
(encoder and started: one more training of the cell each). All default to true
(husai.analysis.optimisation_gap). oracle.cells: which cells run encoder and started, as
stability.control_cells picks cells ([] or absent: every cell); score runs in every cell."""
MODEL_KEYS = (
    "preset",
    "seeds",
    "p",
    "operation",
    "n_layers",
    "train_frac",
    "lr",
    "weight_decay",
    "epochs",
    "eval_every",
    "checkpoint_every",
    "snapshot_every",
    "stop_test_acc",
    "stop_frac_single_freq",
)


@dataclass
class SAERun:
    """One grid cell: an SAE config trained with every SAE seed at once on one model's hook."""

    model_seed: int
    hook: str
    cfg: SAETrainConfig
    seeds: list[int]

    @property
    def name(self) -> str:
        """Folder name from the parameters that vary in a grid."""
        c = self.cfg
        width = f"x{c.expansion}" if c.latents is None else f"n{c.latents}"
        return f"{c.architecture}_{width}_{c.family.cell_knob()}"

    def folder(self, root: Path) -> Path:
        return root / "saes" / f"model_seed{self.model_seed}" / self.hook / self.name


@dataclass
class StudyConfig:
    model: TrainConfig
    """Model recipe (model seeds come from `model_seeds`)."""
    model_seeds: list[int]
    """One model is trained per seed."""
    hooks: list[str]
    """TransformerLens hook names; activations are read at the `=` position."""
    seeds: list[int]
    """SAE seeds."""
    saes: list[SAETrainConfig]
    """Expanded SAE grid."""
    threshold: float = 0.7
    """Match threshold of the shared fraction (Paulo & Belrose 2025) and of reappearance."""
    controls: tuple = ()
    """Model-side controls run for every cell (husai.study.controls): memorised, untrained."""
    control_seeds: int = 3
    """The first this-many SAE seeds train the controls."""
    control_cells: list = field(default_factory=list)
    """Which cells run the controls: mappings of SAE config keys (and optionally `hook`,
    `model_seed`) that a cell must all match; [] (default): every cell. Controls cost ~2 extra cells
    each, so a sweep runs them on a reference cell."""
    raw: dict = field(default_factory=dict)
    """The YAML as written (copied into the study folder)."""
    oracle: dict = field(default_factory=lambda: dict(score=True, encoder=True, started=True))
    """ORACLE_KEYS -> bool."""

    def has_controls(self, run: SAERun) -> bool:
        return bool(self.controls) and _picked(run, self.control_cells)

    def oracle_for(self, run: SAERun) -> dict:
        """The cell's oracle switches: encoder and started only where oracle.cells picks it."""
        picked = _picked(run, self.oracle.get("cells") or [])
        return dict(
            score=self.oracle["score"],
            encoder=self.oracle["encoder"] and picked,
            started=self.oracle["started"] and picked,
        )

    def runs(self) -> list[SAERun]:
        return [
            SAERun(ms, h, c, self.seeds)
            for ms in self.model_seeds
            for h in self.hooks
            for c in self.saes
        ]


def _int_list(value, key: str) -> list[int]:
    value = value if isinstance(value, list) else [value]
    if not value:
        raise HusaiError(f"study config key {key!r} is an empty list: the grid would be empty")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise HusaiError(f"study config key {key!r} must hold integers, got {value!r}")
    if len(set(value)) != len(value):
        raise HusaiError(f"study config key {key!r} has duplicates: {value!r}")
    return value


def parse_study(d, source: str = "study config") -> StudyConfig:
    if not isinstance(d, dict):
        raise HusaiError(f"{source} must be a mapping, got {type(d).__name__}")
    unknown = [k for k in d if k not in TOP_KEYS]
    if unknown:
        raise HusaiError(f"{source}: unknown key {unknown[0]!r}; valid keys: {', '.join(TOP_KEYS)}")
    m = d.get("model") or {}
    if not isinstance(m, dict):
        raise HusaiError(f"{source}: key 'model' must be a mapping")
    bad = [k for k in m if k not in MODEL_KEYS]
    if bad:
        raise HusaiError(
            f"{source}: unknown key 'model.{bad[0]}'; valid keys: {', '.join(MODEL_KEYS)}"
        )
    preset = m.get("preset", "fast")
    if preset not in PRESETS:
        raise HusaiError(
            f"{source}: key 'model.preset' must be one of {', '.join(PRESETS)}, got {preset!r}"
        )
    over = {k: v for k, v in m.items() if k not in ("preset", "seeds")}
    try:
        model = TrainConfig(**{**PRESETS[preset], **over}, preset=preset)
        model.validate()
    except TypeError as e:
        raise HusaiError(f"{source}: bad 'model' section ({e})") from None
    except HusaiError as e:
        raise HusaiError(f"{source}: model: {e}") from None
    model_seeds = _int_list(m.get("seeds", [0]), "model.seeds")
    hooks = d.get("hooks", ["blocks.0.hook_resid_post"])
    hooks = hooks if isinstance(hooks, list) else [hooks]
    if not hooks or not all(isinstance(h, str) for h in hooks):
        raise HusaiError(
            f"{source}: key 'hooks' must be a non-empty list of hook names, got {hooks!r}"
        )
    seeds = _int_list(d.get("seeds", [42, 123, 456, 789, 1011]), "seeds")
    entries = d.get("saes")
    if not isinstance(entries, list) or not entries:
        raise HusaiError(f"{source}: key 'saes' must be a non-empty list of SAE configs")
    saes = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise HusaiError(f"{source}: saes[{i}] must be a mapping of SAE config keys")
        axes = {k: (v if isinstance(v, list) else [v]) for k, v in entry.items()}
        for k, v in axes.items():
            if not v:
                raise HusaiError(
                    f"{source}: key 'saes[{i}].{k}' is an empty list: the grid would be empty"
                )
        for combo in itertools.product(*axes.values()):
            try:
                saes.append(config_from_dict(dict(zip(axes, combo)), f"{source} saes[{i}]"))
            except HusaiError as e:
                raise HusaiError(str(e)) from None
    st = d.get("stability") or {}
    if isinstance(st, dict) and "null_pairs" in st:
        raise HusaiError(
            f"{source}: key 'stability.null_pairs' is gone: every null is now drawn once per "
            "seed pair "
            "(husai.analysis.agreement); remove it"
        )
    if not isinstance(st, dict) or any(
        k not in ("threshold", "controls", "control_seeds", "control_cells") for k in st
    ):
        raise HusaiError(
            f"{source}: key 'stability' takes only 'threshold', 'controls', 'control_seeds' and "
            "'control_cells'"
        )
    threshold = st.get("threshold", 0.7)
    if (
        not isinstance(threshold, (int, float))
        or isinstance(threshold, bool)
        or not 0 < threshold < 1
    ):
        raise HusaiError(
            f"{source}: key 'stability.threshold' must be a number in (0, 1), got {threshold!r}"
        )
    from husai.study.controls import CONTROLS

    controls = st.get("controls") or []
    if (
        not isinstance(controls, list)
        or any(c not in CONTROLS for c in controls)
        or len(set(controls)) < len(controls)
    ):
        raise HusaiError(
            f"{source}: key 'stability.controls' must be a list of distinct names from "
            f"{', '.join(CONTROLS)}, got {controls!r}"
        )
    n_ctrl = st.get("control_seeds", min(3, len(seeds)))
    if (
        not isinstance(n_ctrl, int)
        or isinstance(n_ctrl, bool)
        or not 2 <= n_ctrl <= max(2, len(seeds))
    ):
        raise HusaiError(
            f"{source}: key 'stability.control_seeds' must be an integer from 2 to the number "
            f"of SAE seeds ({len(seeds)}), got {n_ctrl!r}"
        )
    cells = st.get("control_cells") or []
    _check_cells(cells, f"{source}: key 'stability.control_cells'")
    oracle = d.get("oracle") or {}
    if not isinstance(oracle, dict) or any(
        k not in ORACLE_KEYS or (k != "cells" and not isinstance(v, bool))
        for k, v in oracle.items()
    ):
        raise HusaiError(
            f"{source}: key 'oracle' takes only {', '.join(ORACLE_KEYS)}, each true or false "
            f"(cells: a list of cell mappings), got {oracle!r}"
        )
    _check_cells(oracle.get("cells") or [], f"{source}: key 'oracle.cells'")
    oracle = dict(dict(score=True, encoder=True, started=True), **oracle)
    cfg = StudyConfig(
        model,
        model_seeds,
        hooks,
        seeds,
        saes,
        float(threshold),
        tuple(controls),
        n_ctrl,
        cells,
        d,
        oracle,
    )
    names = [r.folder(Path(".")) for r in cfg.runs()]
    if len(set(names)) != len(names):
        raise HusaiError(
            f"{source}: two grid cells map to the same run folder (duplicate SAE configs)"
        )
    return cfg


SHIPPED = {"default": "study.yaml", "full": "study_full.yaml"}
"""The studies that ship inside the package (husai/study/configs/, package data, so an installed
wheel has them too): `husai study --config NAME`; `default` is what `husai study` and `make run`
run."""


def shipped_config(name: str) -> Path:
    return Path(__file__).resolve().with_name("configs") / SHIPPED[name]


def resolve_config(value: str | Path) -> Path:
    """A --config value: a YAML path, or the name of a shipped study (a path of that name wins)."""
    path = Path(value)
    if str(value) in SHIPPED and not path.exists():
        return shipped_config(str(value))
    return path


def load_study(path: str | Path) -> StudyConfig:
    import yaml

    path = resolve_config(path)
    if not path.is_file():
        raise HusaiError(f"study config not found: {path}")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise HusaiError(
            f"study config {path} is not valid YAML ({str(e).splitlines()[0]})"
        ) from None
    except UnicodeDecodeError:
        raise HusaiError(f"study config {path} is not a text file (not UTF-8)") from None
    return parse_study(d, f"study config {path}")


def _picked(run: SAERun, cells: list) -> bool:
    """Whether the cell matches one of the mappings (all its keys), or cells is empty."""
    cell = dict(run.cfg.to_dict(), hook=run.hook, model_seed=run.model_seed)
    return not cells or any(all(cell.get(k) == v for k, v in m.items()) for m in cells)


def _check_cells(cells, what: str) -> None:
    keys = set(all_keys()) | {"hook", "model_seed"}
    if not isinstance(cells, list) or not all(
        isinstance(m, dict) and m and set(m) <= keys for m in cells
    ):
        raise HusaiError(
            f"{what} must be a list of mappings of SAE config keys (and hook, model_seed), "
            f"got {cells!r}"
        )
