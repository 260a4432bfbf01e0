"""The SAE training config: every key of a train-sae YAML file or a study's `saes` entry, validated.

The keys are flat, as users write them: the training keys below (SAETrainConfig's fields) and the
keys of the chosen architecture's family (its FamilyConfig, e.g. k for topk, l1_coeff for relu;
husai.sae.family). `cfg.k` reads the family's key; a key of another family is refused, naming its
owners. `config_from_dict` and `load_config` check names and types and name the offending key in
a one-line error. The measurements behind the defaults: BENCHMARKS.md, "Why the SAE defaults".
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from husai.errors import HusaiError
from husai.model.data import check_seed
from husai.sae.family import FamilyConfig, families, family, owners
from husai.sae.optim import OPTIMIZERS


@dataclass(init=False)
class SAETrainConfig:
    """Everything that defines an SAE training run: the training keys here, the family's keys in
    `family` (read them as cfg.k, cfg.l1_coeff, ...). SAETrainConfig(architecture="relu",
    l1_coeff=0.5, epochs=10) takes both kinds flat."""

    architecture: str = "topk"
    """The SAE family: topk, batchtopk, matryoshka, relu, jumprelu (husai.sae.family lists them)."""
    expansion: int = 16
    """d_sae = expansion * d_in (unless `latents` is set)."""
    latents: typing.Optional[int] = None
    """d_sae itself, whatever d_in is, so that widths compare across hooks of different sizes and
    can be smaller than d_in. null: use expansion."""
    decoder_norm: str = "unit"
    """How training keeps the decoder rows (families that can rescale: the TopK family). unit: unit
    rows, the gradient's component along each row removed and the rows renormalised after every step
    (Gao et al. sec. 2.3). rescale: free row norms n, each latent's pre-activation times its n and
    decoded with the unit row (SAELens's rescale_acts_by_decoder_norm), folded into unit rows when
    training ends, so the saved SAE is the same kind. unit is the default the study was validated
    with; rescale matches SAELens's trainer on SynthSAEBench (BENCHMARKS.md)."""
    decoder_init_norm: float = 1.0
    """decoder_norm rescale: the decoder (and encoder) rows' norm at init, SAELens's
    decoder_init_norm (its default 0.1: small rows turn further per Adam step). With decoder_norm
    unit it must stay 1."""
    dead_after_epochs: float = 1.0
    """A latent counts as dead (for AuxK and resampling) when it has not fired for this many passes
    over the data."""
    resample_dead: list[int] = field(default_factory=list)
    """Epochs after which dead latents are resampled where the SAE reconstructs worst (Bricken
    et al. 2023, husai.sae.resample): the ReLU family's remedy for dead latents, as AuxK is the TopK
    family's. [] (default): never; epochs >= `epochs` are skipped."""
    init: str = "data"
    """Decoder init: random (isotropic unit rows, Gao et al.) or data (random centred data points,
    jittered by other data points: rotation-equivariant, StackedSAE.init_weights). On the grokked
    model's low-rank residual, random init leaves many latents dead (BENCHMARKS.md)."""
    b_dec_init: str = "median"
    """b_dec at init: median (the geometric median of the data, Gao et al. sec. 2.3) or zeros
    (SAELens 6's). Data init centres its rows on the median either way."""
    batch_size: int = 256
    """Inputs per step (per seed)."""
    epochs: int = 20
    """Passes over the activations (with converge_ev set: the most it may take)."""
    converge_ev: typing.Optional[float] = None
    """Stop before `epochs` once training has converged (husai.sae.train.converged): for every seed
    the training EV rose by less than this over the last `converge_window` epochs and the dead
    fraction did not fall over them. null (default): always `epochs`. The default study: 0.002."""
    converge_window: int = 3
    """Epochs the convergence rule looks back over (it cannot stop before this many + 1)."""
    lr: typing.Optional[float] = 3e-3
    """Learning rate (relu's default: 1e-2, its family's training_defaults); null = 2e-4 /
    sqrt(d_sae / 2^14) (Gao et al. sec. 2.4's rule, made for LLM-scale runs: with ~1000 steps it
    under-trains here)."""
    optimizer: str = "row_adam"
    """row_adam (husai.sae.optim.RowAdam: one second moment per row, so training on rotated
    activations gives the rotated SAEs: the SAE is a property of the data, not of its basis) or
    adam (torch's, fused: one per coordinate; in the activations' PCA basis it trains a different,
    worse SAE: BENCHMARKS.md)."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    data_seed: typing.Optional[int] = None
    """Batch order. null (default): each SAE seed shuffles with its own generator (data_order_rng),
    so seeds differ in init AND data order and their agreement is not inflated by shared batches.
    An integer: one order from torch.Generator().manual_seed(data_seed), shared by all seeds."""
    data_span: typing.Optional[float] = None
    """Keep every decoder and encoder row in the data span: the fewest principal directions of the
    centred training activations holding >= this share of their variance (e.g. 0.999). The initial
    rows are projected onto it and, after every optimizer step, projected again (exact, where
    projecting the gradient would not be: Adam rescales each coordinate). Why: directions with ~zero
    data variance otherwise take full-size Adam noise steps and rows drift out of the span
    (docs/methods.md, "The data metric"). null (default): off; its trade-offs: BENCHMARKS.md."""
    trajectory_epochs: list[int] = field(default_factory=lambda: [0, 1, 3])
    """Epochs after which the weights are recorded (TrainResult.trajectory,
    OUT/trajectory.safetensors): 0 = the initialisation; epochs >= `epochs` are skipped."""
    family: FamilyConfig = None
    """The architecture's own keys (husai.sae.family); filled with its defaults when not given."""

    def __init__(self, architecture: str = "topk", family: FamilyConfig | None = None, **keys):
        """Flat keys, as a YAML file has them: training keys and the family's. A key of another
        family, or of none, is a HusaiError naming it."""
        self.architecture = architecture
        fam = _family(architecture)
        for f in _TRAINING_FIELDS:
            if f.name in keys:
                value = keys.pop(f.name)
            elif f.name in fam.config.training_defaults:
                value = fam.config.training_defaults[f.name]
            else:
                value = f.default_factory() if f.default is dataclasses.MISSING else f.default
            setattr(self, f.name, value)
        base = family if isinstance(family, fam.config) else fam.config()
        own = {k: keys.pop(k) for k in fam.keys() if k in keys}
        if keys:
            _refuse(next(iter(keys)), architecture)
        self.family = dataclasses.replace(base, **own) if own else base

    def __getattr__(self, name: str):
        # only reached for names that are not attributes: the family's keys (cfg.k, cfg.l1_coeff)
        fam = self.__dict__.get("family")
        if fam is not None and name in fam.__dataclass_fields__:
            return getattr(fam, name)
        raise AttributeError(
            f"{type(self).__name__} of architecture "
            f"{self.__dict__.get('architecture')!r} has no key {name!r}"
        )

    def validate(self, d_in: int | None = None) -> "SAETrainConfig":
        fam = family(self.architecture)
        if self.optimizer not in OPTIMIZERS:
            raise HusaiError(
                f"config key 'optimizer': unknown {self.optimizer!r}; "
                f"choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.decoder_norm not in ("unit", "rescale"):
            raise HusaiError(
                f"config key 'decoder_norm': unknown {self.decoder_norm!r}; choose unit or rescale"
            )
        if self.decoder_norm == "rescale" and not fam.rescalable:
            can = [f.name for f in families().values() if f.rescalable]
            raise HusaiError(
                f"config key 'decoder_norm': rescale is for {', '.join(can)}; "
                f"{self.architecture} keeps its own decoder"
            )
        if not (self.decoder_init_norm > 0 and math.isfinite(self.decoder_init_norm)):
            raise HusaiError(
                f"config key 'decoder_init_norm' must be a positive number, "
                f"got {self.decoder_init_norm}"
            )
        if self.decoder_norm == "unit" and self.decoder_init_norm != 1:
            raise HusaiError(
                "config key 'decoder_init_norm' needs decoder_norm rescale "
                "(unit rows start at norm 1)"
            )
        if self.b_dec_init not in ("median", "zeros"):
            raise HusaiError(
                f"config key 'b_dec_init': unknown {self.b_dec_init!r}; choose median or zeros"
            )
        if self.init not in ("random", "data"):
            raise HusaiError(f"config key 'init': unknown {self.init!r}; choose random or data")
        if self.latents is not None and self.latents < 1:
            raise HusaiError(f"config key 'latents' must be >= 1, got {self.latents}")
        if self.converge_ev is not None and not (self.converge_ev > 0):
            raise HusaiError(
                f"config key 'converge_ev' must be a positive number or null, "
                f"got {self.converge_ev}"
            )
        for name in ("expansion", "batch_size", "epochs", "converge_window"):
            if getattr(self, name) < 1:
                raise HusaiError(f"config key {name!r} must be >= 1, got {getattr(self, name)}")
        if self.dead_after_epochs < 0:
            raise HusaiError(
                f"config key 'dead_after_epochs' must be >= 0, got {self.dead_after_epochs}"
            )
        for key, v in self.to_dict().items():
            if isinstance(v, float) and not math.isfinite(v):
                raise HusaiError(f"config key {key!r} must be a finite number, got {v}")
        if self.data_seed is not None:
            check_seed(self.data_seed, "config key 'data_seed'")
        if self.data_span is not None and not 0 < self.data_span <= 1:
            raise HusaiError(
                f"config key 'data_span' must lie in (0, 1] or be null, got {self.data_span}"
            )
        for key, low in (("resample_dead", 1), ("trajectory_epochs", 0)):
            v = getattr(self, key)
            if any(e < low for e in v) or len(set(v)) != len(v):
                raise HusaiError(f"config key {key!r} must hold distinct epochs >= {low}, got {v}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise HusaiError(f"config key 'lr' must be a positive number, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise HusaiError("config keys 'beta1' and 'beta2' must lie in [0, 1)")
        width = None
        if d_in is not None:
            width = (
                f"latents {self.latents}"
                if self.latents is not None
                else f"expansion {self.expansion} x d_in {d_in}"
            )
        self.family.validate(None if d_in is None else self.d_sae(d_in), width)
        return self

    def d_sae(self, d_in: int) -> int:
        return self.latents if self.latents is not None else self.expansion * d_in

    def learning_rate(self, d_in: int) -> float:
        if self.lr is not None:
            return self.lr
        return max(1e-4, 2e-4 / math.sqrt(self.d_sae(d_in) / 2**14))

    def build(self, n_seeds: int, d_in: int, sparsity: list | None = None):
        """The untrained StackedSAE of this config (its family builds it); sparsity: one value of
        the family's sparsity key per seed slot instead of the config's."""
        return self.family.build(
            n_seeds, d_in, self.d_sae(d_in), self.decoder_norm == "rescale", sparsity
        )

    def to_dict(self) -> dict:
        """The flat keys: architecture and the width first, then the family's, then training's."""
        d = dict(architecture=self.architecture, expansion=self.expansion, latents=self.latents)
        d.update({f.name: getattr(self.family, f.name) for f in fields(self.family)})
        d.update({f.name: getattr(self, f.name) for f in _TRAINING_FIELDS if f.name not in d})
        return {
            k: list(v) if isinstance(v, list) else v for k, v in d.items()
        }  # a copy: lists are mutable


_TRAINING_FIELDS = [f for f in fields(SAETrainConfig) if f.name not in ("architecture", "family")]


def training_keys() -> list[str]:
    return ["architecture"] + [f.name for f in _TRAINING_FIELDS]


def all_keys() -> list[str]:
    """Every key any registered family's config takes (training keys first)."""
    keys = training_keys()
    for fam in families().values():
        keys += [k for k in fam.keys() if k not in keys]
    return keys


def _family(name):
    if not isinstance(name, str):
        raise HusaiError(
            f"config key 'architecture' must be str, got {type(name).__name__} {name!r}"
        )
    return family(name)


def _refuse(key: str, architecture: str) -> None:
    own = family(architecture).keys()
    belongs = owners(key)
    if belongs:
        raise HusaiError(
            f"config key {key!r} is for {', '.join(belongs)}, not {architecture} "
            f"({architecture}'s own keys: {', '.join(own) or 'none'})"
        )
    raise HusaiError(
        f"unknown config key {key!r}; valid keys for {architecture}: "
        f"{', '.join(training_keys() + own)}"
    )


def _check_type(key: str, value, hint) -> object:
    """Value of YAML key `key` checked against the dataclass annotation; ints accepted as floats."""
    if typing.get_origin(hint) is list:  # list[int]: every item an int (bools are not)
        if isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            return list(value)
        raise HusaiError(
            f"config key {key!r} must be a list of int, got {type(value).__name__} {value!r} (in a "
            f"study config a list is a grid axis: write [[0, 1, 3]] for the list [0, 1, 3])"
        )
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise HusaiError(
        f"config key {key!r} must be {hint.__name__}, got {type(value).__name__} {value!r}"
    )


def config_from_dict(d: dict, source: str = "config", record: bool = False) -> SAETrainConfig:
    """Build a config from a dict; unknown key or wrong type -> HusaiError naming the key.
    record: d is a config husai wrote (cfg.json's husai_config): keys of other families, which
    husai before the family registry wrote for every architecture, are dropped."""
    if not isinstance(d, dict):
        raise HusaiError(f"{source} must be a mapping of keys to values, got {type(d).__name__}")
    arch = d.get("architecture", "topk")
    try:
        fam = _family(arch)
    except HusaiError as e:
        raise HusaiError(f"{source}: {e}") from None
    hints = typing.get_type_hints(SAETrainConfig)
    hints = {k: hints[k] for k in training_keys()} | typing.get_type_hints(fam.config)
    if record:
        d = {k: v for k, v in d.items() if k in hints or not owners(k)}
    unknown = [k for k in d if k not in hints]
    if unknown:
        try:
            _refuse(unknown[0], arch)
        except HusaiError as e:
            raise HusaiError(f"{source}: {e}") from None
    return SAETrainConfig(**{k: _check_type(k, v, hints[k]) for k, v in d.items()}).validate()


def load_config(path: str | Path) -> SAETrainConfig:
    return config_from_dict(read_config_keys(path), f"config {path}")


def read_config_keys(path: str | Path) -> dict:
    """The keys a YAML config file sets, as written (checked by config_from_dict)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise HusaiError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise HusaiError(f"config {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise HusaiError(f"config {path} is not a text file (not UTF-8)") from None
    config_from_dict(d, f"config {path}")  # its errors name the file
    return d
