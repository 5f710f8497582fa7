"""A small document model rendered twice: Markdown (images beside it) and a standalone HTML page (images inline).

Files are written atomically (temporary file in the same folder, then ``os.replace``), so a reader sees either the
previous report or the new one, never half of one.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from lightning_green.energy.report import write_bytes_atomic

__all__ = ["Document", "ReportFiles", "write_bytes_atomic"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{border-bottom:2px solid #2a9d8f;padding-bottom:.2em}h2{margin-top:1.6em;color:#264653}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;
text-align:right}th{background:#f1f5f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;margin:.4em 0}code{background:#f4f4f4;padding:0 .2em}.note{color:#666;font-size:.9em}
"""


@dataclass(frozen=True)
class ReportFiles:
    """What a report wrote: the Markdown file, the HTML page (or ``None``) and the PNGs."""

    markdown: Path
    html: Path | None
    images: tuple[Path, ...]


@dataclass
class _Block:
    kind: str
    text: str = ""
    level: int = 2
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    png: bytes = b""
    name: str = ""


def _inline_html(text: str) -> str:
    """Escape, then turn ``code`` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class Document:
    """Headings, paragraphs, tables and PNG images, in order.

    Example:
        >>> doc = Document("Demo")
        >>> doc.table(["a", "b"], [["1", "2"]])
        >>> print(doc.to_markdown("img"))  # doctest: +NORMALIZE_WHITESPACE
        # Demo
        <BLANKLINE>
        | a | b |
        |---|---|
        | 1 | 2 |
        <BLANKLINE>
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[_Block] = []

    def heading(self, text: str, level: int = 2) -> None:
        """A section heading."""
        self.blocks.append(_Block("heading", text=text, level=level))

    def paragraph(self, text: str, note: bool = False) -> None:
        """A paragraph (``note``: small print)."""
        self.blocks.append(_Block("note" if note else "paragraph", text=text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        """A table of strings."""
        self.blocks.append(_Block("table", header=list(header), rows=[list(map(str, r)) for r in rows]))

    def image(self, name: str, png: bytes, alt: str) -> None:
        """A PNG image, written as ``name`` beside the Markdown and embedded in the HTML."""
        self.blocks.append(_Block("image", text=alt, png=png, name=name))

    @property
    def images(self) -> list[tuple[str, bytes]]:
        """(file name, PNG bytes) of every image."""
        return [(b.name, b.png) for b in self.blocks if b.kind == "image"]

    def to_markdown(self, image_dir: str) -> str:
        """GitHub-flavoured Markdown; images linked from ``image_dir`` (relative to the Markdown file)."""
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            if b.kind == "heading":
                out += [f"{'#' * b.level} {b.text}", ""]
            elif b.kind in ("paragraph", "note"):
                out += [f"*{b.text}*" if b.kind == "note" else b.text, ""]
            elif b.kind == "table":
                out.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
                out.append("|" + "---|" * len(b.header))
                out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows]
                out.append("")
            elif b.kind == "image":
                out += [f"![{b.text}]({image_dir}/{b.name})", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        """A standalone HTML page (CSS and images inline)."""
        out = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(self.title)}</h1>",
        ]
        for b in self.blocks:
            if b.kind == "heading":
                out.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
            elif b.kind == "paragraph":
                out.append(f"<p>{_inline_html(b.text)}</p>")
            elif b.kind == "note":
                out.append(f'<p class="note">{_inline_html(b.text)}</p>')
            elif b.kind == "table":
                head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.header)
                body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in b.rows)
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b.kind == "image":
                data = base64.b64encode(b.png).decode("ascii")
                out.append(f'<img alt="{html.escape(b.text)}" src="data:image/png;base64,{data}">')
        out.append("</body></html>")
        return "\n".join(out) + "\n"

    def write(self, out_dir: str | os.PathLike[str], basename: str, html_page: bool = True) -> ReportFiles:
        """Write ``basename.md`` (+ ``basename.html``) and the PNGs into ``basename_files/`` under ``out_dir``.

        Stale files of an earlier version of the report go: PNGs it no longer has, and its HTML page when
        ``html_page`` is false.
        """
        out_dir = Path(out_dir)
        image_dir = f"{basename}_files"
        images = tuple(write_bytes_atomic(out_dir / image_dir / name, png) for name, png in self.images)
        for stale in (out_dir / image_dir).glob("*.png"):  # plots of an earlier version of this report
            if stale not in images:
                stale.unlink()
        md = write_bytes_atomic(out_dir / f"{basename}.md", self.to_markdown(image_dir).encode("utf-8"))
        page = write_bytes_atomic(out_dir / f"{basename}.html", self.to_html().encode("utf-8")) if html_page else None
        if not html_page:  # the page of an earlier version of this report would contradict the new Markdown
            (out_dir / f"{basename}.html").unlink(missing_ok=True)
        return ReportFiles(md, page, images)
