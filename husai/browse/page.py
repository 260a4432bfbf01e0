"""browser.html: an offline page (no CDN, no server, nothing fetched from the network) that shows
every latent.

The page is the template below, the stylesheet and script beside this module (browser.css;
browser.js: data access, measures, drawing; app.js: the list, the selected latent, the model page;
vanilla: no library to vendor). The page itself holds an index (the models, the cells, each SAE's
summary) and the model pages' neuron levels; each cell's data (its SAEs' per-latent measures and
matches, each SAE's activation levels as a base85 deflate blob and its logit effects as base85
bytes; husai.browse.data says what they hold) is a separate payload, read only when that cell is
first opened. Where the payloads live:

    one cell (`husai browse` on a train-sae output):  inside the page, one <script type=
        "application/json" id="cell-N"> each: one self-contained file, parsed on opening the cell;
    several cells (a study):  one file per cell beside the page, DIR/browser_data/cell_NNN.js,
        each `HB.register(N, {...});`, loaded by a <script src> element the page adds when the
        cell is opened. A <script src> works under file:// (fetch() of a local file does not),
        so the page still needs no server; it opens as fast whatever the study's size, since it
        holds no activation data.

`read_page` puts either form back together (the tests and the benchmark use it).
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np

from husai.analysis.optimisation_gap import NEAR
from husai.browse.data import (
    LEVELS,
    MATCH_THRESHOLD,
    cell_data,
    find_cells,
    grid_layout,
    model_data,
    resolve_model,
    text85,
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


SUMMARY = (
    "cell",
    "model",
    "hook",
    "seed",
    "path",
    "architecture",
    "d_sae",
    "l0",
    "ev",
    "n_live",
    "oracle",
    "threshold",
)
"""The fields of an SAE the page's index holds; the rest is in its cell's payload."""
DATA_DIR = "{stem}_data"
"""The folder of a study page's cell files, beside the page: browser_data/ for browser.html."""
FILE_TAG = "/* husai browse: cell data of {page} */"
"""The first line of every cell file, so that a rerun replaces only its own files."""


def browser_data(root: Path, model: Path | None = None) -> tuple[dict, dict[str, str]]:
    """(the page's JSON data, {blob id: text85 blob}) for every SAE cell under root: "z{sae}" the
    activation levels, "e{sae}" the logit effects, "n{model}" the model page's neurons."""
    from husai.analysis.compare import (
        expand_sae_dirs,
        hook_ground_truth,
        hook_of,
        load_sae_folders,
        metadata,
        model_context,
    )
    from husai.analysis.latent_types import TYPES
    from husai.browse.effects import DENSITY_BINS, EFFECT_LEVELS, logit_map

    cells, skipped = [], []
    for c in find_cells(root):
        (skipped if (c / "failed.json").is_file() else cells).append(c)
    if not cells:
        raise HusaiError(f"{root} holds no finished SAE cell (every one failed)")
    saes, blobs, model_ids, hooks, contexts, layouts, maps = [], {}, {}, {}, {}, {}, {}
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
        if (key, hook) not in maps:
            maps[key, hook] = logit_map(mdir, hook)
        p, op = ctx["p"], ctx.get("operation", "add")
        layout = layouts.setdefault((p, op), grid_layout(p, op))
        label = str(cell.relative_to(root)) if cell != root else root.name
        base = len(saes)
        threshold = MATCH_THRESHOLD
        if (cell / "analysis.json").is_file():  # the study's own threshold for this cell
            threshold = float(
                read_json(cell / "analysis.json", "cell analysis").get("threshold", MATCH_THRESHOLD)
            )
        gt = hook_ground_truth(ctx)
        for e in cell_data(cell, label, ctx, gt, layout, mid, threshold, maps[key, hook]):
            e["threshold"] = threshold
            e["matches"] = {str(base + j): v for j, v in e["matches"].items()}
            blobs[f"z{len(saes)}"] = e.pop("blob")
            if "effect" in e:
                blobs[f"e{len(saes)}"] = text85(e.pop("effect"))
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
        effect_levels=EFFECT_LEVELS,
        density_bins=DENSITY_BINS,
        near=NEAR,
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


def _json(obj) -> str:
    # "<" inside a <script> element can end it early ("</script") or change how the parser reads it
    # ("<!--"); JSON allows the escaped form \u003c, which no folder name can turn back into markup
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def split_cells(data: dict, blobs: dict[str, str]) -> tuple[dict, list[dict]]:
    """(the index: data with each SAE cut to SUMMARY and a list of cells {label, saes}, one payload
    {saes: {id: the SAE's other fields}, blobs: {id: text}} per cell)."""
    index = {k: v for k, v in data.items() if k != "saes"}
    index["saes"], index["cells"], payloads = [], [], []
    order: dict[str, int] = {}
    for i, e in enumerate(data["saes"]):
        ci = order.setdefault(e["cell"], len(order))
        if ci == len(payloads):
            index["cells"].append(dict(label=e["cell"], saes=[]))
            payloads.append(dict(saes={}, blobs={}))
        index["cells"][ci]["saes"].append(i)
        index["saes"].append({**{k: e.get(k) for k in SUMMARY}, "cell_id": ci})
        payloads[ci]["saes"][str(i)] = {k: v for k, v in e.items() if k not in SUMMARY}
        for b in (f"z{i}", f"e{i}"):
            if b in blobs:
                payloads[ci]["blobs"][b] = blobs[b]
    return index, payloads


def render(
    data: dict, blobs: dict[str, str], title: str, data_dir: str | None = None
) -> tuple[str, dict[str, str]]:
    """(the page's HTML text, {file name: text} of the cell files). data_dir None: every cell's
    payload inside the page; else each in data_dir/cell_NNN.js (a path relative to the page)."""
    import html

    index, payloads = split_cells(data, blobs)
    files = {}
    if data_dir is None:
        tags = [
            f'<script type="application/json" id="cell-{ci}">{_json(pl)}</script>'
            for ci, pl in enumerate(payloads)
        ]
    else:
        tags = []
        for ci, pl in enumerate(payloads):
            name = f"cell_{ci:03d}.js"
            index["cells"][ci]["file"] = f"{data_dir}/{name}"
            tag = FILE_TAG.format(page=html.escape(title))
            files[name] = f"{tag}\nHB.register({ci}, {_json(pl)});\n"
    tags += [
        f'<script type="application/octet-stream" id="{k}">{v}</script>'
        for k, v in blobs.items()
        if k.startswith("n")
    ]
    js = (HERE / "browser.js").read_text() + (HERE / "app.js").read_text()
    page = TEMPLATE.format(
        generator=GENERATOR,
        title=html.escape(title),
        css=(HERE / "browser.css").read_text(),
        data=_json(index),
        blobs="\n".join(tags),
        js=js,
    )
    return page, files


def read_page(page: str | Path) -> tuple[dict, dict[str, str]]:
    """A page written by write_browser, put back together: (data with every SAE's full entry,
    {blob id: text}), whether its cells are inside it or in files beside it."""
    import re

    page = Path(page)
    text = page.read_text()
    grab = r'<script type="application/json" id="{}">(.*?)</script>'
    index = json.loads(re.search(grab.format("husai-data"), text, re.S).group(1))
    blobs = dict(
        re.findall(r'<script type="application/octet-stream" id="(\w+)">(.*?)</script>', text)
    )
    saes = index["saes"]
    for ci, cell in enumerate(index["cells"]):
        if cell.get("file"):
            js = (page.parent / cell["file"]).read_text()
            body = js[js.index(f"HB.register({ci}, ") + len(f"HB.register({ci}, ") :]
            payload = json.loads(body[: body.rindex(");")])
        else:
            payload = json.loads(re.search(grab.format(f"cell-{ci}"), text, re.S).group(1))
        for i, rest in payload["saes"].items():
            saes[int(i)] = {**saes[int(i)], **rest}
        blobs.update(payload["blobs"])
    return index, blobs


def write_browser(
    root: str | Path,
    out: str | Path | None = None,
    model: str | Path | None = None,
    split: bool | None = None,
) -> Path:
    """Write the browser for the SAEs under root (a study folder, a `husai train-sae` output, or any
    folder holding SAE cells) to out (default root/browser.html), atomically. split: the cells'
    data in files beside the page (module docstring); None: when there is more than one cell.
    Returns the page's path."""
    root = Path(root)
    if not root.is_dir():
        raise HusaiError(f"{root} is not a folder")
    out = Path(out) if out is not None else root / "browser.html"
    data, blobs = browser_data(root, Path(model) if model is not None else None)
    if split is None:
        split = len({e["cell"] for e in data["saes"]}) > 1
    folder = out.parent / DATA_DIR.format(stem=out.stem)
    page, files = render(data, blobs, root.resolve().name, folder.name if split else None)
    if split:
        _write_cell_files(folder, files, FILE_TAG.format(page="").split(":")[0])
    atomic_write_bytes(out, page.encode("utf-8"))
    return out


def _write_cell_files(folder: Path, files: dict[str, str], tag: str) -> None:
    """Replace `folder` by the cell files: written into a hidden sibling, then swapped in, so that
    a page never reads half a file. A folder holding anything husai browse did not write is never
    touched."""
    import os
    import shutil
    import tempfile

    if folder.exists():
        own = folder.is_dir() and all(
            f.is_file() and f.name.startswith("cell_") and f.read_text()[:80].startswith(tag)
            for f in folder.iterdir()
        )
        if not own:
            raise HusaiError(
                f"{folder} holds files husai browse did not write; the page's cell files go "
                "there: move them, or write the page elsewhere (--out)"
            )
    for stale in (
        *folder.parent.glob(f".{folder.name}.partial-*"),
        *folder.parent.glob(f".{folder.name}.old-*"),
    ):  # what a run killed while writing the cell files left (no page reads it)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o755)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{tmp.name[-8:]}"
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
