"""One offline HTML page for a workflow run: a section per step with its text, figures, tables and output files.

The page has no scripts and no external resources (no CDN): figures are linked relative to the page and shown
as thumbnails, or embedded as data URIs with ``embed_images=True`` so the page can be mailed on its own.

    report = Report("landcover demo")
    report.add_step("Export training data", text="...", figures=["chips.png"], table={"chips": 120},
                    files=["chips/esri_model_definition.emd"], code="landcover export ...")
    report.write("out/report.html")
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import mimetypes
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from ..raster import atomic_output

#: A table: {key: value}, {row: {column: value}}, [{column: value}, ...] or [[header...], [row...], ...].
Table = Mapping | Sequence

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.5em 2em 4em; color: #1d2733; background: #fbfbfa; }
h1 { margin-bottom: 0.1em; } h2 { margin-top: 2em; border-bottom: 2px solid #d8dee4; padding-bottom: 0.2em; }
h3 { margin: 1.2em 0 0.4em; font-size: 1em; color: #44515e; }
.meta, .seconds { color: #66717c; font-size: 0.9em; } .seconds { font-weight: normal; margin-left: 0.6em; }
nav ol { columns: 2; } nav a, td a, li a { color: #0b5cad; }
pre { background: #f0f2f4; padding: 0.7em 1em; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #d8dee4; padding: 0.25em 0.7em; text-align: left; }
th { background: #eef1f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; max-width: 360px; } figure img { max-width: 360px; max-height: 300px; border: 1px solid #ccd3da; }
figcaption { font-size: 0.85em; color: #44515e; word-break: break-all; }
.missing { color: #b3261e; }
"""


@dataclass
class Step:
    """One workflow step of a report."""

    title: str
    text: str | None = None
    figures: list = field(default_factory=list)
    tables: dict[str, Table] = field(default_factory=dict)
    files: list = field(default_factory=list)
    code: str | None = None
    seconds: float | None = None


class Report:
    """Collects workflow steps and writes them as one self-contained HTML page.

    ``summary`` is an optional table of headline figures shown above the steps.
    """

    def __init__(self, title: str, intro: str | None = None, summary: Table | None = None):
        self.title, self.intro, self.summary = title, intro, summary
        self.steps: list[Step] = []

    def add_step(
        self,
        title: str,
        text: str | None = None,
        figures: Iterable = (),
        table: Table | None = None,
        files: Iterable = (),
        code: str | None = None,
        seconds: float | None = None,
        tables: Mapping[str, Table] | None = None,
    ) -> Step:
        """Add a step. ``figures`` and ``files`` are paths or ``(caption, path)`` pairs; ``table`` is one
        unnamed table and ``tables`` named ones; ``code`` is the command or call that ran the step."""
        named = dict(tables or {})
        if table is not None:
            named = {"": table, **named}
        step = Step(title, text, list(figures), named, list(files), code, seconds)
        self.steps.append(step)
        return step

    def write(self, path: str | os.PathLike, embed_images: bool = False) -> Path:
        """Write the page to ``path`` (atomically); figures and files are linked relative to it."""
        path = Path(path).absolute()
        page = self.render(path.parent, embed_images)
        with atomic_output(path) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return path

    def render(self, base: str | os.PathLike, embed_images: bool = False) -> str:
        """The page as a string, with links relative to the folder ``base``."""
        base = Path(base).absolute()
        now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        parts = [
            "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(self.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
            f"<h1>{_esc(self.title)}</h1>", f'<p class="meta">Written {_esc(now)}</p>',
        ]
        if self.intro:
            parts.append(_paragraphs(self.intro))
        if self.summary is not None:
            parts.append(_table(self.summary))
        if self.steps:
            items = "".join(f'<li><a href="#step-{i}">{_esc(s.title)}</a></li>' for i, s in enumerate(self.steps, 1))
            parts.append(f"<nav><ol>{items}</ol></nav>")
        for i, step in enumerate(self.steps, 1):
            parts.append(_step_html(i, step, base, embed_images))
        parts += ["</body>", "</html>", ""]
        return "\n".join(parts)


def write_report(
    out_dir: str | os.PathLike,
    sections: Iterable[Mapping | Step],
    title: str = "landcover demo",
    filename: str = "report.html",
    intro: str | None = None,
    summary: Table | None = None,
    embed_images: bool = False,
) -> Path:
    """Write ``out_dir/filename`` from ``sections`` (``Step`` objects or dicts of :meth:`Report.add_step`
    arguments) and return its path."""
    report = Report(title, intro=intro, summary=summary)
    for section in sections:
        if isinstance(section, Step):
            report.steps.append(section)
        else:
            report.add_step(**section)
    return report.write(Path(out_dir) / filename, embed_images=embed_images)


# --- HTML pieces ---------------------------------------------------------------------------------------------

def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{_esc(' '.join(p.split()))}</p>" for p in text.split("\n\n") if p.strip())


def _captioned(item) -> tuple[str, Path]:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return str(item[0]), Path(item[1])
    return Path(item).name, Path(item)


def _href(target: Path, base: Path) -> str:
    """A relative URL from the page's folder to ``target`` (absolute file URL on another drive)."""
    target = target if target.is_absolute() else (base / target)
    try:
        rel = os.path.relpath(target, base)
    except ValueError:  # another drive on Windows
        return target.as_uri()
    return quote(Path(rel).as_posix())


def _size(path: Path) -> str:
    if path.is_dir():
        return "folder"
    n = float(path.stat().st_size)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _resolve(path: Path, base: Path) -> Path:
    return path if path.is_absolute() else base / path


def _step_html(index: int, step: Step, base: Path, embed_images: bool) -> str:
    seconds = f'<span class="seconds">{step.seconds:.1f} s</span>' if step.seconds is not None else ""
    out = [f'<section id="step-{index}">', f"<h2>{index}. {_esc(step.title)}{seconds}</h2>"]
    if step.text:
        out.append(_paragraphs(step.text))
    if step.code:
        out.append(f"<pre><code>{_esc(step.code.strip())}</code></pre>")
    for name, table in step.tables.items():
        if name:
            out.append(f"<h3>{_esc(name)}</h3>")
        out.append(_table(table))
    if step.figures:
        out.append('<div class="figures">')
        for item in step.figures:
            caption, path = _captioned(item)
            full = _resolve(path, base)
            if not full.is_file():
                out.append(f'<figure><figcaption class="missing">missing figure: {_esc(path)}</figcaption></figure>')
                continue
            href = _href(full, base)
            src = _data_uri(full) if embed_images else href
            out.append(f'<figure><a href="{href}"><img src="{src}" alt="{_esc(caption)}" loading="lazy"></a>'
                       f'<figcaption><a href="{href}">{_esc(caption)}</a></figcaption></figure>')
        out.append("</div>")
    if step.files:
        out.append("<h3>Outputs</h3><ul>")
        for item in step.files:
            caption, path = _captioned(item)
            full = _resolve(path, base)
            if full.exists():
                out.append(f'<li><a href="{_href(full, base)}">{_esc(caption)}</a> '
                           f'<span class="meta">({_size(full)})</span></li>')
            else:
                out.append(f'<li class="missing">missing: {_esc(path)}</li>')
        out.append("</ul>")
    out.append("</section>")
    return "\n".join(out)


def _data_uri(path: Path) -> str:
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _cell(value) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{value}</td>"
    if isinstance(value, int) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") in "iu"):
        return f'<td class="num">{int(value):,}</td>'
    if isinstance(value, float) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f"):
        return f'<td class="num">{float(value):.4g}</td>'
    return f"<td>{_esc(value)}</td>"


def _table(table: Table) -> str:
    """A table from {k: v}, {row: {col: v}}, [{col: v}] or [[header], [row], ...]."""
    if isinstance(table, Mapping):
        if table and all(isinstance(v, Mapping) for v in table.values()):
            columns = list(dict.fromkeys(c for row in table.values() for c in row))
            head = "<tr><th></th>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
            rows = [f"<tr><th>{_esc(k)}</th>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>"
                    for k, r in table.items()]
        else:
            head = ""
            rows = [f"<tr><th>{_esc(k)}</th>{_cell(v)}</tr>" for k, v in table.items()]
    else:
        items = list(table)
        if items and all(isinstance(r, Mapping) for r in items):
            columns = list(dict.fromkeys(c for row in items for c in row))
            head = "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in columns) + "</tr>"
            rows = ["<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in items]
        elif items:
            head = "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in items[0]) + "</tr>"
            rows = ["<tr>" + "".join(_cell(v) for v in r) + "</tr>" for r in items[1:]]
        else:
            head, rows = "", []
    return "<table>" + head + "".join(rows) + "</table>"
