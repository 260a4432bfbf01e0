"""browser.html: one self-contained page (no CDN, no server, nothing fetched) that shows every
latent.

The page is the template below, the stylesheet and script beside this module (browser.css;
browser.js: data access, measures, drawing; app.js: the list, the selected latent, the model page;
vanilla: no library to vendor), the browser's data as JSON and each SAE's activation
levels as a base85 deflate blob in its own <script> element, inflated by the browser's own
DecompressionStream when the SAE is first opened (so a study of hundreds of SAEs opens as fast as
one). husai.browse.data says what the data hold.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np

from husai.browse.data import (
    LEVELS,
    MATCH_THRESHOLD,
    cell_data,
    find_cells,
    grid_layout,
    model_data,
    resolve_model,
)
from husai.errors import HusaiError
from husai.io import atomic_write_bytes, read_json
from husai.outputs import BROWSER_TAG

GENERATOR = BROWSER_TAG.decode()
"""Marks a page husai wrote, so that a rerun may replace it and nothing else
(husai.outputs.BROWSER)."""
HERE = Path(__file__).resolve().parent

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
{generator}
<title>husai feature browser: {title}</title>
<style>{css}</style></head>
<body>
<header><h1>husai feature browser</h1><span class="run">{title}</span>
<nav><button id="tab-latents" class="on">Latents</button><button id="tab-model">Model</button></nav>
<span id="status">loading...</span></header>
<main id="app"></main>
<script type="application/json" id="husai-data">{data}</script>
{blobs}
<script>{js}</script>
</body></html>
"""


def browser_data(root: Path, model: Path | None = None) -> tuple[dict, dict[str, str]]:
    """(the page's JSON data, {element id: text85 blob}) for every SAE cell under root."""
    from husai.analysis.compare import (
        expand_sae_dirs,
        hook_ground_truth,
        hook_of,
        load_sae_folders,
        metadata,
        model_context,
    )
    from husai.analysis.latent_types import TYPES

    cells, skipped = [], []
    for c in find_cells(root):
        (skipped if (c / "failed.json").is_file() else cells).append(c)
    if not cells:
        raise HusaiError(f"{root} holds no finished SAE cell (every one failed)")
    saes, blobs, model_ids, hooks, contexts, layouts = [], {}, {}, {}, {}, {}
    for cell in cells:
        first = load_sae_folders(expand_sae_dirs([cell])[:1])[0]
        hook = hook_of(first)
        if not hook:
            raise HusaiError(f"{cell}: cfg.json names no hook (metadata.hook_name)")
        mdir = resolve_model(metadata(first).get("model_path"), root, model)
        key = str(mdir.resolve())
        mid = model_ids.setdefault(key, len(model_ids))
        hooks.setdefault(key, (mdir, []))
        if hook not in hooks[key][1]:
            hooks[key][1].append(hook)
        ctx = model_context(mdir, hook)
        contexts.setdefault(key, {})[hook] = ctx
        p, op = ctx["p"], ctx.get("operation", "add")
        layout = layouts.setdefault((p, op), grid_layout(p, op))
        label = str(cell.relative_to(root)) if cell != root else root.name
        base = len(saes)
        threshold = MATCH_THRESHOLD
        if (cell / "analysis.json").is_file():  # the study's own threshold for this cell
            threshold = float(
                read_json(cell / "analysis.json", "cell analysis").get("threshold", MATCH_THRESHOLD)
            )
        for e in cell_data(cell, label, ctx, hook_ground_truth(ctx), layout, mid, threshold):
            e["threshold"] = threshold
            e["matches"] = {str(base + j): v for j, v in e["matches"].items()}
            blobs[f"z{len(saes)}"] = e.pop("blob")
            saes.append(e)
    models = []
    for key, (mdir, hs) in hooks.items():
        m = model_data(mdir, hs, contexts[key])
        blobs[f"n{len(models)}"] = m["neurons"].pop("blob")
        models.append(m)
    data = dict(
        root=str(root),
        created=time.strftime("%Y-%m-%d %H:%M:%S"),
        threshold=MATCH_THRESHOLD,
        levels=LEVELS,
        types=list(TYPES),
        skipped=[str(c.relative_to(root)) if c != root else root.name for c in skipped],
        layouts={
            f"{p}-{op}": base64.b64encode(lay.astype(np.uint16).tobytes()).decode("ascii")
            for (p, op), lay in layouts.items()
        },
        models=models,
        saes=saes,
    )
    return data, blobs


def render(data: dict, blobs: dict[str, str], title: str) -> str:
    """The page's HTML text."""
    import html

    # "<" inside a <script> element can end it early ("</script") or change how the parser reads it
    # ("<!--"); JSON allows the escaped form \u003c, which no folder name can turn back into markup
    payload = json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
    tags = "\n".join(
        f'<script type="application/octet-stream" id="{k}">{v}</script>' for k, v in blobs.items()
    )
    js = (HERE / "browser.js").read_text() + (HERE / "app.js").read_text()
    return TEMPLATE.format(
        generator=GENERATOR,
        title=html.escape(title),
        css=(HERE / "browser.css").read_text(),
        data=payload,
        blobs=tags,
        js=js,
    )


def write_browser(
    root: str | Path, out: str | Path | None = None, model: str | Path | None = None
) -> Path:
    """Write the browser for the SAEs under root (a study folder, a `husai train-sae` output, or any
    folder holding SAE cells) to out (default root/browser.html), atomically. Returns its path."""
    root = Path(root)
    if not root.is_dir():
        raise HusaiError(f"{root} is not a folder")
    out = Path(out) if out is not None else root / "browser.html"
    data, blobs = browser_data(root, Path(model) if model is not None else None)
    atomic_write_bytes(out, render(data, blobs, root.resolve().name).encode("utf-8"))
    return out
