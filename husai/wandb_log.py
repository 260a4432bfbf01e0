"""Optional Weights & Biases logging, imported only when --wandb is given.

Runs are offline unless WANDB_MODE says otherwise (these machines have no network; sync later
with `wandb sync DIR/wandb/offline-run-*`).
"""

from __future__ import annotations

import os
from pathlib import Path

from husai.errors import HusaiError


def init_run(project: str, config: dict, out_dir: str | Path, name: str | None = None):
    try:
        import wandb
    except ImportError:
        raise HusaiError("--wandb needs the wandb package: pip install 'husai[wandb]'") from None
    mode = os.environ.get("WANDB_MODE", "offline")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return wandb.init(
        project=project,
        config=config,
        dir=str(out_dir),
        mode=mode,
        name=name or Path(out_dir).name,
        reinit="finish_previous",
    )
