"""A tiny document model (headings, paragraphs, tables, images) rendered to Markdown and to self-contained HTML."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, List, Sequence, Tuple


class Doc:
    """A tiny document model rendered to Markdown and to self-contained HTML."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: List[Tuple[str, Any]] = []

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(header), [[str(c) for c in r] for r in rows])))

    def img(self, path: Path, caption: str) -> None:
        self.blocks.append(("img", (Path(path), caption)))

    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, x in self.blocks:
            if kind == "h":
                out += [f"## {x}", ""]
            elif kind == "p":
                out += [x, ""]
            elif kind == "table":
                header, rows = x
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
            elif kind == "img":
                path, caption = x
                out += [f"![{caption}]({path.relative_to(base).as_posix()})", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        css = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
               "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
               "text-align:right}th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}"
               "figure{margin:1em 0}img{max-width:100%}figcaption{font-size:13px;color:#555}")  # fmt: skip
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
               f"<style>{css}</style></head><body><h1>{html.escape(self.title)}</h1>"]  # fmt: skip
        for kind, x in self.blocks:
            if kind == "h":
                out.append(f"<h2>{html.escape(x)}</h2>")
            elif kind == "p":
                out.append(f"<p>{html.escape(x).replace('`', '')}</p>")
            elif kind == "table":
                header, rows = x
                out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
                out.append("</table>")
            elif kind == "img":
                path, caption = x
                data = base64.b64encode(path.read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                           f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip
        out.append("</body></html>")
        return "\n".join(out)


def pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"
