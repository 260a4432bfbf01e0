"""Shared helpers for the SAE tests: a small modular-addition model trained once per session.

(Kept in a module of tests/sae rather than in conftest.py so that the SAE tests own their fixtures.)
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from husai.io import save_tensors
from husai.model.data import make_dataset
from husai.model.transformer import ModelConfig, Transformer

P, TRAIN_FRAC, SPLIT_SEED = 23, 0.6, 1


@functools.lru_cache(maxsize=None)
def tiny_model_dir() -> Path:
    """Train a p=23 model (d_model 32) for 400 full-batch AdamW epochs; save it as a run folder."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    mc = ModelConfig(p=P, d_model=32, n_heads=2, d_head=16, d_mlp=64)
    model = Transformer(mc).init_weights(0)
    data = make_dataset(P, TRAIN_FRAC, SPLIT_SEED)
    x, y = data.tokens[data.train_idx], data.labels[data.train_idx]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1.0, betas=(0.9, 0.98))
    for _ in range(400):
        loss = F.cross_entropy(model(x).double(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = Path(tempfile.mkdtemp(prefix="husai-sae-test-model-"))
    save_tensors(out / "model.safetensors", model.state_dict())
    cfg = dict(
        mc.to_hooked_transformer_config(),
        p=P,
        operation="add",
        seed=0,
        split_seed=SPLIT_SEED,
        train_frac=TRAIN_FRAC,
    )
    (out / "config.json").write_text(json.dumps(cfg))
    return out
