"""report.html from the report's sections: a table of contents, the answer beside the headline
figure on the first screen, every section's markdown rendered block by block, `<details>` blocks
passed through (each cell's full reading, the long tables), and every figure with its caption and an
anchor (`#fig-NAME`) that the answer's sentences link to."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path


def details(summary: str, body: str) -> str:
    """A folded block, in markdown that GitHub renders (the blank lines let the body be markdown)
    and that `md_to_html` turns into the same HTML element."""
    return f"<details><summary>{html.escape(summary)}</summary>\n\n{body}\n\n</details>"


def anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """Escaped text with markdown links [label](url) as anchors."""
    out, last = [], 0
    for m in _LINK.finditer(text):
        out += [html.escape(text[last : m.start()])]
        out += [f"<a href='{html.escape(m.group(2))}'>{html.escape(m.group(1))}</a>"]
        last = m.end()
    return "".join(out) + html.escape(text[last:])


def md_to_html(body: str, link=lambda url: url) -> str:
    """A section body in HTML, block by block (blocks are separated by blank lines): a markdown
    table, a list of `- ` or `1. ` items, a raw `<details>`/`</details>` line, or a paragraph.
    link: rewrites a link's address (report.md's figures/NAME.png -> the figure's anchor)."""
    out = []
    body = _LINK.sub(lambda m: f"[{m.group(1)}]({link(m.group(2))})", body)
    for block in body.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        if all(line.startswith(("<details", "</details")) for line in lines):
            out.append("\n".join(lines))  # made by `details`: the summary is escaped there
        elif all(line.startswith("|") for line in lines):
            cells = [
                [c.strip() for c in line.strip("|").split("|")]
                for line in lines
                if not set(line) <= set("|-")
            ]
            out += [
                "<table>",
                "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells[0]) + "</tr>",
            ]
            for r in cells[1:]:
                out.append(
                    "<tr>"
                    + "".join(f"<td class='{c.lower()}'>{_inline(c)}</td>" for c in r)
                    + "</tr>"
                )
            out.append("</table>")
        elif all(line.startswith("- ") for line in lines):
            out.append(
                "<ul>" + "".join(f"<li>{_inline(line[2:])}</li>" for line in lines) + "</ul>"
            )
        elif all(re.match(r"\d+\. ", line) for line in lines):
            items = "".join(f"<li>{_inline(line.split('. ', 1)[1])}</li>" for line in lines)
            out.append(f"<ol>{items}</ol>")
        else:
            out.append(f"<p>{_inline(' '.join(lines))}</p>")
    return "\n".join(out)


CSS = (
    "body{font-family:sans-serif;max-width:1340px;margin:1em auto;padding:0 1em;color:#222}"
    "h1{margin:0.2em 0 0.4em}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 6px}td.pass{background:#dfd}td.fail{background:#fdd}"
    "img{max-width:100%}figure{margin:1.5em 0}figcaption{font-size:13px;color:#444}"
    "#top{display:flex;gap:1.5em;align-items:flex-start}#answer{flex:1 1 46%;font-size:14px}"
    "#answer h2{font-size:1.5em;margin:0.2em 0}#answer ol{padding-left:1.3em;margin:0.3em 0}"
    "#answer li{margin-bottom:0.35em}"
    "#fig-headline{flex:1 1 54%;margin:0}#fig-headline img{max-height:620px}"
    "details{margin:0.3em 0}summary{cursor:pointer}nav.toc{font-size:13px;column-count:3}"
)


def page(sections, figs, headline, browsable: bool = False) -> str:
    """sections: [(title, markdown)], the first being the answer; figs: [(png, caption)] for the
    Figures section; headline: (png, caption) drawn beside the answer, or None."""
    fig_ids = {p.name: f"fig-{p.stem}" for p, _ in figs + ([headline] if headline else [])}

    def link(url: str) -> str:
        name = url.rsplit("/", 1)[-1]
        return f"#{fig_ids[name]}" if url.startswith("figures/") and name in fig_ids else url

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>husai study "
        f"report</title><style>{CSS}</style></head><body><h1>husai study report</h1>"
    ]
    (t0, b0), rest = sections[0], sections[1:]
    parts.append(
        f"<div id='top'><section id='answer'><h2 id='{anchor(t0)}'>{html.escape(t0)}</h2>"
        f"{md_to_html(b0, link)}</section>"
        + (_figure(*headline, fig_ids) if headline else "")
        + "</div>"
    )
    toc = [(anchor(t), t) for t, _ in rest] + [("figures", "Figures")]
    parts.append(
        "<nav class='toc'><b>Contents</b><ul>"
        + "".join(f"<li><a href='#{a}'>{html.escape(t)}</a></li>" for a, t in toc)
        + (
            "<li><a href='browser.html'>the feature browser (every latent of every seed)</a></li>"
            if browsable
            else ""
        )
        + "</ul></nav>"
    )
    for title, body in rest:
        parts.append(f"<h2 id='{anchor(title)}'>{html.escape(title)}</h2>{md_to_html(body, link)}")
    parts.append("<h2 id='figures'>Figures</h2>")
    parts += [_figure(png, cap, fig_ids) for png, cap in figs]
    return "\n".join(parts + ["</body></html>"])


def _figure(png: Path, cap: str, ids: dict) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return (
        f"<figure id='{ids[png.name]}'><img src='data:image/png;base64,{data}' "
        f"alt='{html.escape(cap)}'><figcaption>{html.escape(cap)}</figcaption></figure>"
    )
