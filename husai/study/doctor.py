"""The pipeline self-test behind `husai doctor`: five checks, each reported with its figures.

    1. load the transformer        parameter count, modulus, test accuracy
    2. extract activations         shape, mean, std
    3. train a TopK SAE, 1 epoch   L0 against k, explained variance, dead fraction
    4. Fourier overlap             of that SAE's latents against chance, and the share of its
                                   decoder weight in the key-frequency subspaces
    5. save and load the SAE       max weight difference (should be ~0)

Without a model checkpoint it first trains a small model (p = 47, ~1 minute on a CPU).
A failed check says what to try: a troubleshooting guide, as code (model_hints,
sae_hints: measured figures in, hints out, empty when all is well).

A check takes its inputs from earlier checks (2 the modulus from 1, 3 the activations from 2,
4 the model, activations and SAE, 5 the activations' metadata and the SAE). When one of those
produced nothing (it stopped on an error or was itself skipped) the check does not run: it is
reported as skipped, naming that check. A check that ran but missed its thresholds (an ungrokked
model, many dead latents) still hands on what it made, so the later checks still say what they see.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import torch

from husai import __version__
from husai.analysis.latent_fourier import fourier_report
from husai.model.analyze import loss_acc, neuron_acts
from husai.model.checkpoint import load_model
from husai.model.data import make_dataset, make_tokens
from husai.model.fourier import key_frequencies
from husai.model.train import TrainConfig, train_model
from husai.model.transformer import Transformer
from husai.resources import oom_hint
from husai.sae.activations import model_activations
from husai.sae.checkpoint import load_sae, save_sae
from husai.sae.config import SAETrainConfig
from husai.sae.family import family
from husai.sae.metrics import reconstruction_metrics
from husai.sae.train import train_saes

if TYPE_CHECKING:
    from husai.sae.base import StackedSAE

DOCTOR_P = 47
GROKKED_ACC = 0.95
DEAD_MAX = 0.30
OVERLAP_MIN = 0.3
KEY_WEIGHT_MIN = 0.5
N_CHECKS = 5


def model_hints(test_acc: float, frac_single: float | None = None) -> list[str]:
    hints = []
    if test_acc < GROKKED_ACC:
        hints.append(
            f"model not grokked (test accuracy {test_acc:.1%} < {GROKKED_ACC:.0%}): "
            "train longer (--epochs) or use the fast preset "
            "(husai train-model --preset fast)"
        )
    elif frac_single is not None and frac_single < 0.5:
        hints.append(
            f"model grokked but its circuit is not clean yet ({frac_single:.0%} "
            "single-frequency neurons): train longer so weight decay finishes the "
            "clean-up (Nanda et al. 2023, section 5)"
        )
    return hints


def sae_hints(
    architecture: str,
    k: int | None,
    l0: float,
    frac_dead: float,
    fourier_overlap: float | None = None,
    explained_variance: float | None = None,
    key_weight_frac: float | None = None,
) -> list[str]:
    """key_weight_frac: mean fraction of live decoder-row norm inside the key-frequency subspaces.

    Fourier overlap (mean activation purity) is bounded for sparse latents: a latent firing on part
    of a phase cycle spreads its variance over harmonics (ReLU(cos) scores 0.84, narrower firing
    0.26), so a trained 16x TopK SAE scores ~0.03 while its decoder lies ~70% in the key-frequency
    subspaces. The Fourier hint therefore fires only when the weights do not show the structure
    either.
    """
    hints = []
    if family(architecture).config.sparsity_key == "k" and k and not 0.5 * k <= l0 <= 1.1 * k:
        hints.append(
            f"L0 {l0:.1f} is far from k = {k}: check the TopK configuration "
            "(k, expansion; TopK then ReLU can only lower L0 when pre-activations are "
            "negative, so a tiny L0 means a bad b_enc/b_dec init)"
        )
    if frac_dead > DEAD_MAX:
        hints.append(
            f"{frac_dead:.0%} dead latents (> {DEAD_MAX:.0%}): keep AuxK on "
            "(aux_coeff 1/32, Gao et al. A.2) and lower the learning rate (--lr)"
        )
    weights_low = key_weight_frac is None or key_weight_frac < KEY_WEIGHT_MIN
    if fourier_overlap is not None and fourier_overlap < OVERLAP_MIN and weights_low:
        weights = (
            ""
            if key_weight_frac is None
            else f" and only {key_weight_frac:.0%} of decoder weight lies in the "
            "key-frequency subspaces"
        )
        hints.append(
            f"Fourier overlap {fourier_overlap:.2f} < {OVERLAP_MIN}{weights}: verify the "
            "model grokked (husai analyze-model) and train the SAE longer (--epochs)"
        )
    if explained_variance is not None and explained_variance < 0.5:
        hints.append(
            f"explained variance {explained_variance:.2f} is low: train longer or raise "
            "k / expansion"
        )
    return hints


@dataclass
class Check:
    name: str
    passed: bool = False
    figures: str = ""
    hints: list[str] = field(default_factory=list)
    skipped: bool = False
    output: Any = field(default=None, repr=False)  # what later checks take as input


class LoadedModel(NamedTuple):
    model: Transformer
    p: int


class Activations(NamedTuple):
    acts: torch.Tensor
    info: dict  # hook_name, model_path, split, p, operation (husai.sae.activations)


def environment() -> dict:
    return dict(
        husai=__version__,
        torch=torch.__version__,
        python=platform.python_version(),
        device="cuda" if torch.cuda.is_available() else "cpu",
        threads=torch.get_num_threads(),
    )


# The five checks. Each fills in its Check (figures, hints, passed) and returns what later checks
# take from it.


def check_transformer(check: Check, checkpoint: Path) -> LoadedModel:
    model, cfg = load_model(checkpoint)
    data = make_dataset(cfg["p"], cfg["train_frac"], cfg["split_seed"], cfg["operation"])
    _, acc = loss_acc(model, data.tokens[data.test_idx], data.labels[data.test_idx])
    n = sum(p.numel() for p in model.parameters())
    check.figures = f"{n:,} parameters, p = {cfg['p']}, test accuracy {acc:.2%}"
    check.hints = model_hints(acc)
    check.passed = not check.hints
    return LoadedModel(model, cfg["p"])


def check_activations(check: Check, checkpoint: Path, loaded: LoadedModel) -> Activations:
    acts, info = model_activations(checkpoint, layer=0)
    check.figures = (
        f"{info['hook_name']}: shape {list(acts.shape)}, mean {acts.mean():.4f}, "
        f"std {acts.std():.4f}"
    )
    check.passed = (
        acts.shape[0] == loaded.p**2 and bool(torch.isfinite(acts).all()) and float(acts.std()) > 0
    )
    return Activations(acts, info)


def check_sae_training(
    check: Check, activations: Activations, k: int, expansion: int
) -> StackedSAE:
    # One epoch is few steps (2,209 inputs at p = 47), so: batches of 16 and lr 1e-2. Measured on
    # the p = 47 test model: EV 0.73, 2% dead, 64% of decoder weight in the key-frequency
    # subspaces (random directions: 15%); with batch 256 and lr 3e-3 data init is still
    # reconstructing ~k times too large after one epoch (EV -189).
    cfg = SAETrainConfig(
        architecture="topk", expansion=expansion, k=k, epochs=1, batch_size=16, lr=1e-2
    )
    res = train_saes(activations.acts, cfg, [42])
    m = reconstruction_metrics(res.sae, activations.acts)
    l0, ev, dead = m["l0"][0], m["explained_variance"][0], m["frac_dead"][0]
    check.figures = f"L0 {l0:.1f} (k = {k}), explained variance {ev:.3f}, dead {dead:.1%}"
    check.hints = sae_hints("topk", k, l0, dead)
    check.passed = not check.hints
    return res.sae


def check_fourier_overlap(
    check: Check, loaded: LoadedModel, activations: Activations, sae: StackedSAE
) -> None:
    p, acts = loaded.p, activations.acts
    keys = key_frequencies(neuron_acts(loaded.model, make_tokens(p)), p)[0]
    with torch.no_grad():
        z = sae.encode(acts)[0].double()
    rep = fourier_report(z, p, keys, W_dec=sae.W_dec.detach()[0].double(), resid_acts=acts.double())
    fo, chance = rep["fourier_overlap"], rep["chance_purity"]
    wf = rep.get("weight_space", {}).get("union_mean_live")
    dim = rep.get("weight_space", {}).get("union_dim", 0)
    check.figures = (
        f"Fourier overlap {fo:.3f} (chance {chance:.4f}); decoder weight in "
        f"key-frequency subspaces {wf:.0%} (random direction: "
        f"{dim / acts.shape[1]:.0%}); key frequencies {keys}"
    )
    check.hints = sae_hints("topk", None, 0.0, 0.0, fourier_overlap=fo, key_weight_frac=wf)
    check.passed = not check.hints


def check_save_and_load(
    check: Check, folder: Path, activations: Activations, sae: StackedSAE
) -> None:
    save_sae(folder, sae, 0, dict(activations.info, seed=42))
    loaded = load_sae(folder)
    diff = max(
        float((loaded.W_enc - sae.W_enc[0].detach()).abs().max()),
        float((loaded.W_dec - sae.W_dec[0].detach()).abs().max()),
        float((loaded.b_enc - sae.b_enc[0].detach()).abs().max()),
        float((loaded.b_dec - sae.b_dec[0].detach()).abs().max()),
    )
    check.figures = f"max weight difference {diff:.2e}"
    check.passed = diff < 1e-6


class _Report:
    """Runs the checks in order, printing each (with its hints) as it finishes."""

    def __init__(self, say: Callable[[str], Any]):
        self.say = say
        self.checks: list[Check] = []

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Check:
        """Run check `name` as fn(check, *args, **kwargs). An argument that is a Check is an input
        from that earlier check: fn gets its output instead. If any such check produced no output,
        fn does not run and this check is skipped, naming the first of them."""
        check = Check(name)
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, Check)]
        blocker = next((c for c in inputs if c.output is None), None)
        if blocker is not None:
            check.skipped = True
            check.figures = (
                f"skipped: needs {blocker.name}, which "
                f"{'was skipped' if blocker.skipped else 'failed'}"
            )
        else:
            args = tuple(map(_given, args))
            kwargs = {key: _given(value) for key, value in kwargs.items()}
            _run(check, lambda c: fn(c, *args, **kwargs))
        self.checks.append(check)
        self.say(
            f"[{len(self.checks)}/{N_CHECKS}] {check.name:<26} "
            f"{'PASS' if check.passed else 'FAIL'}  {check.figures}"
        )
        for h in check.hints:
            self.say(f"      -> {h}")
        return check


def _given(arg: Any) -> Any:
    """An argument to a check as the check gets it: an earlier Check stands for its output."""
    return arg.output if isinstance(arg, Check) else arg


def _run(check: Check, fn: Callable[[Check], Any]) -> None:
    """Run one check, keeping what it returns as its output; any exception (including OOM) fails
    it with a one-line reason."""
    try:
        check.output = fn(check)
    except torch.OutOfMemoryError:
        check.passed, check.hints = False, [oom_hint()]
    except Exception as e:  # a broken stage must not hide the remaining report
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        check.passed, check.figures = False, f"error: {msg}"
        if "out of memory" in msg.lower():
            check.hints.append(oom_hint())


def train_small_model(out: Path, say: Callable[[str], Any] = print) -> Path:
    """The doctor's own model when it is given none: p = 47, stopped once grokked (~1 minute)."""
    say(f"no --transformer-checkpoint: training a small model (p = {DOCTOR_P}) in {out} ...")
    t0 = time.time()
    train_model(
        TrainConfig(
            p=DOCTOR_P,
            train_frac=0.5,
            lr=3e-3,
            epochs=3000,
            eval_every=50,
            stop_test_acc=0.995,
            stop_frac_single_freq=0.0,
        ),
        out,
        progress=False,
    )
    say(f"  trained in {time.time() - t0:.0f} s")
    return out


def run_doctor(
    checkpoint: Path | None,
    work: Path,
    say: Callable[[str], Any] = print,
    k: int = 32,
    expansion: int = 16,
) -> list[Check]:
    """Run the five checks on a model run (None: train one in `work`), writing into `work`;
    `say` gets each report line as it is ready. Returns the checks in order."""
    torch.set_flush_denormal(True)
    if checkpoint is None:
        checkpoint = train_small_model(work / "model", say)
    report = _Report(say)
    model = report.run("load transformer", check_transformer, checkpoint)
    acts = report.run("extract activations", check_activations, checkpoint, model)
    sae = report.run("train TopK SAE (1 epoch)", check_sae_training, acts, k=k, expansion=expansion)
    report.run("Fourier overlap", check_fourier_overlap, model, acts, sae)
    report.run("save and load SAE", check_save_and_load, work / "sae", acts, sae)
    say(f"{sum(c.passed for c in report.checks)}/{N_CHECKS} checks passed")
    return report.checks
