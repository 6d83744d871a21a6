"""A tiny report model rendered twice: Markdown (images as files) and self-contained HTML.

Build a `Report` block by block (headings, paragraphs, tables, images, code, bullets), then
`write()` it. The HTML embeds every image as a base64 data URI and carries its own CSS, so the one
file can be mailed or attached to an issue; the Markdown references images by paths relative to the
output folder (copying outside images into `assets/`).

Text may use a small inline Markdown subset: **bold**, `code` and [links](https://...). In HTML all
text is escaped first and the subset applied afterwards, so user text can never inject markup.
"""

from __future__ import annotations

import base64
import html
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ClipforgeError
from ..files import copy_file, write_text
from ..markdown import table

_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".svg": "image/svg+xml", ".webp": "image/webp"}
# A string cell that reads as a number ("0.512", "1,024", "12.5%", "0.51 ± 0.02") is right-aligned too.
_NUMERIC_STR = re.compile(r"^[-+\u2212]?(\d[\d,]*)?\.?\d+(e[-+]?\d+)?\s*(%|±\s*\S+)?$", re.IGNORECASE)
# A cell standing for "no value" ("–", "n/a") does not keep its column from being numeric.
_PLACEHOLDERS = {"-", "\u2013", "\u2014", "n/a", "na"}
_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_SAFE_SCHEMES = {"", "http", "https", "mailto"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       max-width: 1100px; margin: 2em auto; padding: 0 1.2em; line-height: 1.5; color: #1f2328; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
a { color: #0969da; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em;
       background: #f3f4f6; padding: .1em .3em; border-radius: 4px; }
pre { background: #f6f8fa; padding: .8em 1em; border-radius: 6px; overflow-x: auto; }
pre code { background: none; padding: 0; }
nav.toc { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .5em 1.2em;
          display: inline-block; }
nav.toc ul { margin: .3em 0; padding-left: 1.2em; }
.table-wrap { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: .92em; }
caption { caption-side: bottom; color: #57606a; font-size: .9em; padding-top: .4em; text-align: left; }
th, td { border: 1px solid #d0d7de; padding: .3em .6em; }
/* Headers and text cells may wrap so a table fits a laptop screen; numbers and row labels never break. */
th { background: #eaeef2; text-align: left; vertical-align: bottom; }
td.num, td:first-child { white-space: nowrap; }
@media (max-width: 1000px) { body { padding: 0 .8em; } table { font-size: .85em; } th, td { padding: .25em .45em; } }
tbody tr:nth-child(even) { background: #f6f8fa; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2em 0; text-align: center; }
figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: .9em; margin-top: .4em; }
"""


@dataclass
class _Block:
    kind: str  # heading | paragraph | table | image | code | bullets | toc
    data: dict[str, Any]


def format_cell(value: Any) -> str:
    """A table cell as text: floats with 3 decimals, ints with thousands separators, strings as given."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch 0-d scalars
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, bool):  # before Integral: bool is an int subclass
        return str(value)
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return f"{float(value):,.3f}"
    return str(value)


def _is_numeric(value: Any, text: str) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Real) or (hasattr(value, "item") and getattr(value, "ndim", None) == 0):
        return True
    return isinstance(value, str) and bool(_NUMERIC_STR.match(text.strip()))


def _plain(text: str) -> str:
    """Inline Markdown reduced to its visible text (for slugs, alt text and the <title>)."""
    text = _LINK.sub(r"\1", text)
    text = _BOLD.sub(r"\1", text)
    return _CODE.sub(r"\1", text)


def _slug(text: str, seen: dict[str, int]) -> str:
    # GitHub's rule (lowercase, punctuation dropped, spaces to dashes, -1/-2 for repeats), so the
    # Markdown TOC links also work where GitHub renders the file.
    base = re.sub(r"[^\w\- ]", "", _plain(text).strip().lower()).replace(" ", "-") or "section"
    n = seen.get(base, 0)
    seen[base] = n + 1
    return base if n == 0 else f"{base}-{n}"


def _safe_url(escaped_url: str) -> bool:
    url = html.unescape(escaped_url).strip().lower()
    m = re.match(r"^([a-z][a-z0-9+.\-]*):", url)
    return (m.group(1) if m else "") in _SAFE_SCHEMES


def inline_html(text: str) -> str:
    """Escape `text` for HTML, then render the inline subset (`code`, **bold**, [text](url))."""
    out = html.escape(str(text).replace("\x00", ""), quote=True)
    codes: list[str] = []

    def keep_code(m: re.Match) -> str:
        # Code spans are set aside first so ** or [] inside them stay literal.
        codes.append(f"<code>{m.group(1)}</code>")
        return f"\x00{len(codes) - 1}\x00"

    out = _CODE.sub(keep_code, out)
    out = _BOLD.sub(r"<strong>\1</strong>", out)
    # The URL is already escaped (quotes included), so it is safe inside the attribute; only the
    # scheme needs checking (no javascript: and friends).
    out = _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>' if _safe_url(m.group(2))
                    else m.group(1), out)
    return re.sub(r"\x00(\d+)\x00", lambda m: codes[int(m.group(1))], out)


def _md_text(text: str) -> str:
    """Markdown text with raw HTML and unsafe links neutralised outside code spans (Markdown passes HTML through)."""
    def plain(part: str) -> str:
        part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return _LINK.sub(lambda m: m.group(0) if _safe_url(m.group(2)) else m.group(1), part)

    parts = re.split(r"(`[^`\n]+`)", str(text))
    return "".join(p if len(p) > 1 and p.startswith("`") and p.endswith("`") else plain(p) for p in parts)



def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _check_image(path: Path) -> None:
    if not path.is_file():
        raise ClipforgeError(f"report image not found: {path}")


class Report:
    """A document of blocks; `write()` renders it to `<name>.md` and a self-contained `<name>.html`."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[_Block] = []

    def heading(self, text: str, level: int = 2) -> Report:
        """A section heading (level 2 headings make the table of contents; the title is level 1)."""
        self.blocks.append(_Block("heading", {"text": text, "level": min(max(int(level), 1), 6)}))
        return self

    def paragraph(self, text: str) -> Report:
        """A paragraph; inline **bold**, `code` and [links](url) allowed."""
        self.blocks.append(_Block("paragraph", {"text": text}))
        return self

    def table(self, columns: list[str], rows: list[list[Any]], caption: str | None = None) -> Report:
        """A table; numbers are formatted (see `format_cell`), numeric columns right-aligned."""
        for i, row in enumerate(rows):
            if len(row) != len(columns):
                raise ClipforgeError(f"report table row {i} has {len(row)} cells for {len(columns)} columns")
        cells = [[format_cell(v) for v in row] for row in rows]
        # A column is numeric when every cell with a value is; columns without one stay left-aligned.
        filled = [[bool(c) and c.strip().lower() not in _PLACEHOLDERS for c in row] for row in cells]
        numeric = [any(f[j] for f in filled) and all(_is_numeric(r[j], c[j]) for r, c, f in zip(rows, cells, filled)
                                                     if f[j]) for j in range(len(columns))]
        self.blocks.append(_Block("table", {"columns": [str(c) for c in columns], "cells": cells,
                                            "numeric": numeric, "caption": caption}))
        return self

    def image(self, path: str | os.PathLike, caption: str) -> Report:
        """A figure; the file must exist now (it is read again at `write()`)."""
        p = Path(path).resolve()  # resolved now, so a later chdir cannot change which file is meant
        _check_image(p)
        self.blocks.append(_Block("image", {"path": p, "caption": caption}))
        return self

    def code(self, text: str, lang: str = "") -> Report:
        """A preformatted code block."""
        self.blocks.append(_Block("code", {"text": text, "lang": lang}))
        return self

    def bullets(self, items: list[str]) -> Report:
        """A bulleted list; inline markup allowed in each item."""
        self.blocks.append(_Block("bullets", {"items": [str(i) for i in items]}))
        return self

    def contents(self) -> Report:
        """Place the table of contents here (by default it opens the document, under the title)."""
        self.blocks.append(_Block("toc", {}))
        return self

    # -- rendering ------------------------------------------------------------------------------

    def _anchors(self) -> dict[int, str]:
        seen: dict[str, int] = {}
        return {i: _slug(b.data["text"], seen) for i, b in enumerate(self.blocks) if b.kind == "heading"}

    def _toc(self, anchors: dict[int, str]) -> list[tuple[str, str]]:
        return [(self.blocks[i].data["text"], a) for i, a in anchors.items() if self.blocks[i].data["level"] == 2]

    def _toc_at_top(self) -> bool:
        return not any(b.kind == "toc" for b in self.blocks)

    def _md_toc(self, toc: list[tuple[str, str]]) -> list[str]:
        return ["**Contents**", ""] + [f"- [{_md_text(_plain(t))}](#{a})" for t, a in toc] + [""] if toc else []

    def _html_toc(self, toc: list[tuple[str, str]]) -> list[str]:
        items = "".join(f'<li><a href="#{a}">{inline_html(_plain(t))}</a></li>' for t, a in toc)
        return [f'<nav class="toc"><strong>Contents</strong><ul>{items}</ul></nav>'] if toc else []

    def _md_image_paths(self, out_dir: Path) -> dict[int, str]:
        """Each image's path relative to `out_dir`, copying outside images into `out_dir/assets/`."""
        out_dir = out_dir.resolve()
        rel: dict[int, str] = {}
        taken: dict[str, Path] = {}  # asset name -> source, so two different "plot.png" do not collide
        for i, b in enumerate(self.blocks):
            if b.kind != "image":
                continue
            src: Path = b.data["path"]
            _check_image(src)
            if src.is_relative_to(out_dir):
                rel[i] = src.relative_to(out_dir).as_posix()
                continue
            name, k = src.name, 1
            while name in taken and taken[name] != src:
                name, k = f"{src.stem}-{k}{src.suffix}", k + 1
            if name not in taken:
                taken[name] = src
                (out_dir / "assets").mkdir(parents=True, exist_ok=True)
                copy_file(src, out_dir / "assets" / name)
            rel[i] = f"assets/{name}"
        return rel

    def to_markdown(self, image_paths: dict[int, str] | None = None) -> str:
        """The Markdown text; `image_paths` maps block index to the path to print (else the absolute path)."""
        anchors = self._anchors()
        lines = [f"# {_md_text(self.title)}", ""]
        toc = self._toc(anchors)
        if self._toc_at_top():
            lines += self._md_toc(toc)
        for i, b in enumerate(self.blocks):
            d = b.data
            if b.kind == "toc":
                lines += self._md_toc(toc)
            elif b.kind == "heading":
                lines += ["#" * d["level"] + " " + _md_text(d["text"]), ""]
            elif b.kind == "paragraph":
                lines += [_md_text(d["text"]), ""]
            elif b.kind == "table":
                lines += table([_md_text(c) for c in d["columns"]], [[_md_text(c) for c in row] for row in d["cells"]],
                               d["numeric"])
                lines += ["", f"*{_md_text(d['caption'])}*", ""] if d["caption"] else [""]
            elif b.kind == "image":
                p = (image_paths or {}).get(i, d["path"].as_posix())
                target = f"<{p}>" if re.search(r"[\s()<>]", p) else p
                alt = re.sub(r"[\[\]]", "", _plain(d["caption"]))
                lines += [f"![{alt}]({target})", "", f"*{_md_text(d['caption'])}*", ""]
            elif b.kind == "code":
                fence = _fence(d["text"])
                lines += [f"{fence}{d['lang']}", d["text"].rstrip("\n"), fence, ""]
            elif b.kind == "bullets":
                lines += [f"- {_md_text(item)}" for item in d["items"]] + [""]
        return "\n".join(lines).rstrip("\n") + "\n"

    def to_html(self) -> str:
        """A self-contained HTML page: inline CSS, images as data URIs, a TOC of level-2 headings."""
        anchors = self._anchors()
        body: list[str] = [f"<h1>{inline_html(self.title)}</h1>"]
        toc = self._toc(anchors)
        if self._toc_at_top():
            body += self._html_toc(toc)
        for i, b in enumerate(self.blocks):
            d = b.data
            if b.kind == "toc":
                body += self._html_toc(toc)
            elif b.kind == "heading":
                lv = d["level"]
                body.append(f'<h{lv} id="{anchors[i]}">{inline_html(d["text"])}</h{lv}>')
            elif b.kind == "paragraph":
                body.append(f"<p>{inline_html(d['text'])}</p>")
            elif b.kind == "table":
                def cls(j: int, d: dict[str, Any] = d) -> str:
                    return ' class="num"' if d["numeric"][j] else ""

                head = "".join(f"<th{cls(j)}>{inline_html(c)}</th>" for j, c in enumerate(d["columns"]))
                rows = "".join("<tr>" + "".join(f"<td{cls(j)}>{inline_html(c)}</td>" for j, c in enumerate(r))
                               + "</tr>" for r in d["cells"])
                cap = f"<caption>{inline_html(d['caption'])}</caption>" if d["caption"] else ""
                body.append(f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
                            f"<tbody>{rows}</tbody></table></div>")
            elif b.kind == "image":
                src: Path = d["path"]
                _check_image(src)
                mime = _MIME.get(src.suffix.lower(), "application/octet-stream")
                data = base64.b64encode(src.read_bytes()).decode("ascii")
                alt = html.escape(_plain(d["caption"]), quote=True)
                body.append(f'<figure><img src="data:{mime};base64,{data}" alt="{alt}">'
                            f"<figcaption>{inline_html(d['caption'])}</figcaption></figure>")
            elif b.kind == "code":
                lang = f' class="language-{html.escape(d["lang"], quote=True)}"' if d["lang"] else ""
                body.append(f"<pre><code{lang}>{html.escape(d['text'].rstrip(chr(10)))}</code></pre>")
            elif b.kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{inline_html(x)}</li>" for x in d["items"]) + "</ul>")
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
                f"<title>{html.escape(_plain(self.title))}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
                + "\n".join(body) + "\n</body>\n</html>\n")

    def write(self, out_dir: str | os.PathLike, name: str = "report") -> tuple[Path, Path]:
        """Write `<name>.md` and `<name>.html` into `out_dir` atomically; return (md_path, html_path)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        # The HTML is rendered first: it reads (and so checks) every image before any asset is
        # copied or any file written, so a missing image leaves no half-updated pair behind.
        page = self.to_html()
        md = self.to_markdown(self._md_image_paths(out_dir))
        md_path, html_path = out_dir / f"{name}.md", out_dir / f"{name}.html"
        write_text(md_path, md)
        write_text(html_path, page)
        return md_path, html_path
