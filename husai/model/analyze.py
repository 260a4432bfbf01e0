"""Measure a trained model against the Fourier ground truth (Nanda et al. 2023, sections 4-5).

`analyze_model` returns the numbers that go into metrics.json: losses and accuracies, the key
frequencies, the fraction of single-frequency MLP neurons, the W_E Fourier spectrum, and the
restricted / excluded losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from husai.model.data import ModularData
from husai.model.fourier import (
    PURITY_THRESHOLD,
    embed_spectrum,
    frequency_fractions,
    key_frequencies,
    restricted_excluded_loss,
)
from husai.model.transformer import Transformer


@torch.no_grad()
def loss_acc(model: Transformer, tokens: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Float64 cross-entropy and accuracy at `=`. tokens [B, 3], labels [B]."""
    logits = model(tokens)
    return float(F.cross_entropy(logits.to(torch.float64), labels)), float(
        (logits.argmax(-1) == labels).float().mean()
    )


@torch.no_grad()
def neuron_acts(model: Transformer, tokens: torch.Tensor) -> torch.Tensor:
    """Last block's MLP activations (hook_post) at `=` for all p^2 inputs. -> [p*p, d_mlp]."""
    name = f"blocks.{model.cfg.n_layers - 1}.mlp.hook_post"
    _, cache = model.run_with_cache(tokens, [name], last_only=True)
    return cache[name][:, -1]


@torch.no_grad()
def single_freq_fraction(model: Transformer, data: ModularData) -> float:
    """Fraction of MLP neurons with >= 85% of centred variance in one frequency (dead ones count as
    not)."""
    fr = frequency_fractions(neuron_acts(model, data.tokens.to(model.unembed.W_U.device)), data.p)
    return float((fr.max(dim=1).values >= PURITY_THRESHOLD).double().mean())


@torch.no_grad()
def analyze_model(model: Transformer, data: ModularData) -> dict:
    """Everything metrics.json reports about the model's Fourier structure. Runs on all p^2
    inputs."""
    dev = model.unembed.W_U.device
    p = data.p
    tokens, labels = data.tokens.to(dev), data.labels.to(dev)
    tr, te = data.train_idx.to(dev), data.test_idx.to(dev)
    train_loss, train_acc = loss_acc(model, tokens[tr], labels[tr])
    test_loss, test_acc = loss_acc(model, tokens[te], labels[te])
    acts = neuron_acts(model, tokens)
    fr = frequency_fractions(acts, p)  # [d_mlp, (p-1)/2]
    best, best_k = fr.max(dim=1)
    single = best >= PURITY_THRESHOLD
    keys, shares = key_frequencies(acts, p)
    restricted, excluded = restricted_excluded_loss(
        model(tokens), labels, tr, p, keys, data.operation
    )
    counts = {k: int(((best_k + 1 == k) & single).sum()) for k in keys}
    return dict(
        train_loss=train_loss,
        train_acc=train_acc,
        test_loss=test_loss,
        test_acc=test_acc,
        key_frequencies=keys,
        frac_neurons_single_freq=float(single.double().mean()),
        neurons_per_key_frequency={str(k): c for k, c in counts.items()},
        frac_neurons_dead=float((acts.abs().amax(dim=0) == 0).double().mean()),
        frequency_variance_share=shares,
        embed_spectrum=embed_spectrum(model.embed.W_E, p),
        restricted_loss=restricted,
        excluded_loss=excluded,
    )


@torch.no_grad()
def progress_measures(
    snapshots: list, model_config, data: ModularData, keys: list[int], device: str = "cpu"
) -> list[dict]:
    """Nanda et al.'s progress measures (section 5.1) at each weight snapshot (train-model's
    snapshots/epoch_E.safetensors), all with the FINAL key frequencies `keys`, as they define them:
    restricted loss (only the key frequencies' logit components: low once the Fourier circuit alone
    solves the task), excluded loss (those components removed, on the training pairs: rises as the
    memorising solution is cleaned away), train / test loss and the single-frequency neuron
    share."""
    from husai.model.checkpoint import load_weights
    from husai.model.transformer import Transformer

    model = Transformer(model_config).to(device).eval()
    tokens, labels = data.tokens.to(device), data.labels.to(device)
    tr, te = data.train_idx.to(device), data.test_idx.to(device)
    rows = []
    for path in snapshots:
        load_weights(model, path, "weight snapshot")
        restricted, excluded = restricted_excluded_loss(
            model(tokens), labels, tr, data.p, keys, data.operation
        )
        rows.append(
            dict(
                epoch=int(path.stem.split("_")[-1]),  # snapshots/epoch_000025.safetensors
                restricted_loss=restricted,
                excluded_loss=excluded,
                train_loss=loss_acc(model, tokens[tr], labels[tr])[0],
                test_loss=loss_acc(model, tokens[te], labels[te])[0],
                frac_neurons_single_freq=single_freq_fraction(model, data),
            )
        )
    return rows
