"""The SAE families, registered once: everything the rest of husai needs to know about one.

A family is one module (husai.sae.topk, batchtopk, relu, jumprelu) that defines

  - its config: a dataclass of the keys only it reads (k, l1_coeff, ...), each with its docstring,
    subclassing FamilyConfig: `validate`, `build` (its SAE from them), `cell_knob` (its part of a
    study cell's folder name) and the results-table columns it fills;
  - its SAE class (a husai.sae.base.StackedSAE, with `saelens_form` for SAELens's inference format);
  - one `register(Family(...))` call: its YAML name, display label and figure colour.

The trainer, the SAE config, the study, the results table, the figures and the CLI read the registry
(`family`, `families`), so a new family is its module plus one import in husai.sae.architectures
(README, "Where to add things"). The keys users write stay flat: `architecture: relu` with
`l1_coeff` beside the common training keys (husai.sae.config.SAETrainConfig).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import ClassVar

from husai.errors import HusaiError


@dataclass
class FamilyConfig:
    """Base of a family's own config keys (subclasses are dataclasses; every field is a YAML
    key)."""

    sparsity_key: ClassVar[str] = ""
    """The key that sets the sparsity: k (the TopK family) or the penalty weight (l1_coeff). One
    pass can train one value per seed slot of it (husai.sae.cells, husai.sae.calibrate)."""
    columns: ClassVar[tuple[str, ...]] = ()
    """The results-table columns this family fills (husai.study.results; other families leave them
    empty)."""
    training_defaults: ClassVar[dict] = {}
    """Training keys (SAETrainConfig's) whose default this family sets otherwise, e.g. ReLU's lr;
    a value the user gives wins. The measurements: BENCHMARKS.md, "Why the SAE defaults"."""

    def validate(self, d_sae: int | None, width: str) -> None:
        """Raise HusaiError naming the key. d_sae: the SAE's width when known; width: how it was
        given (for messages, e.g. 'latents 64')."""

    def build(
        self, n_seeds: int, d_in: int, d_sae: int, rescale: bool, sparsity: list | None = None
    ):
        """The untrained StackedSAE. sparsity: one value of `sparsity_key` per seed slot, or
        None."""
        raise NotImplementedError

    def cell_knob(self) -> str:
        """This family's part of a study cell's folder name (the knobs a grid varies), e.g. 'k8'."""
        raise NotImplementedError

    def fixed_l0(self) -> float | None:
        """The L0 the config sets by construction (TopK's k), or None when training finds it."""
        return None

    def target(self) -> float | None:
        """The L0 a search must reach before training (PenaltyConfig.target_l0), or None."""
        return None

    def table(self, weight: float | None) -> dict:
        """Values of `columns` for the results table; weight: the penalty weight the L0 search
        found."""
        return {}


@dataclass
class PenaltyConfig(FamilyConfig):
    """A family whose sparsity comes from a penalty weight (sparsity_key), optionally searched for a
    target L0 (husai.sae.calibrate; docs/methods.md, "The L0 search")."""

    target_l0: typing.Optional[float] = None
    """Find the penalty weight that gives this L0 before training (a short search from the given
    weight, which is then only its start), then train every seed at that weight; the search's table
    and the weight are recorded in metrics.json (`calibration`) and each seed's cfg.json. Comparing
    architectures is fair only at matched L0. null: the weight is used as given."""

    def validate(self, d_sae: int | None, width: str) -> None:
        if getattr(self, self.sparsity_key) < 0:
            raise HusaiError(
                f"config key {self.sparsity_key!r} must be >= 0, "
                f"got {getattr(self, self.sparsity_key)}"
            )
        if self.target_l0 is not None and (
            not self.target_l0 > 0 or (d_sae is not None and self.target_l0 >= d_sae)
        ):
            raise HusaiError(
                f"config key 'target_l0' must lie between 0 and d_sae, got {self.target_l0}"
            )

    def cell_knob(self) -> str:
        if self.target_l0 is not None:  # the weight is found per cell: name the target
            return f"targetL0_{self.target_l0:g}"
        return f"{self.knob_prefix}_{getattr(self, self.sparsity_key):g}"

    knob_prefix: ClassVar[str] = ""
    """The weight's short name in folder names (l1, l0)."""

    def target(self) -> float | None:
        return self.target_l0

    def table(self, weight: float | None) -> dict:
        return {
            "target_l0": self.target_l0,
            self.sparsity_key: weight or getattr(self, self.sparsity_key),
        }


@dataclass(frozen=True)
class Family:
    """One registered SAE family."""

    name: str
    """The `architecture` value users write."""
    config: type[FamilyConfig]
    sae: type
    """Its husai.sae.base.StackedSAE subclass."""
    label: str
    """Display name (report, figures)."""
    color: str
    """Matplotlib colour of its lines in the figures."""
    rescalable: bool = False
    """Its SAE can train with decoder_norm rescale (free row norms folded at the end)."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self.config)]


_FAMILIES: dict[str, Family] = {}


def register(fam: Family) -> Family:
    """Add a family (its module calls this once, at import). A second family of the same name
    replaces the first (a test's toy family, re-registered)."""
    if fam.sae.architecture != fam.name:
        raise ValueError(
            f"family {fam.name!r}: its SAE class says architecture {fam.sae.architecture!r}"
        )
    _FAMILIES[fam.name] = fam
    return fam


def unregister(name: str) -> None:
    _FAMILIES.pop(name, None)


def families() -> dict[str, Family]:
    """name -> Family, in registration order (the order of columns, legends and help texts)."""
    import husai.sae.architectures  # noqa: F401  (registers the shipped families)

    return dict(_FAMILIES)


def family(name: str) -> Family:
    """The family called `name`; unknown -> HusaiError naming the choices."""
    known = families()
    if name not in known:
        raise HusaiError(
            f"config key 'architecture': unknown {name!r}; choose one of {', '.join(known)}"
        )
    return known[name]


def owners(key: str) -> list[str]:
    """The families whose config has `key`."""
    return [f.name for f in families().values() if key in f.keys()]
