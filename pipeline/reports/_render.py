"""Save figures beside a report and render its HTML from the packaged jinja2 templates."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here, ever

import matplotlib.pyplot as plt  # noqa: E402

from pipeline import __version__  # noqa: E402
from pipeline.errors import StageError  # noqa: E402
from pipeline.io import atomic_path, write_text  # noqa: E402

logger = logging.getLogger(__name__)

#: a report page (HTML plus the figures it links) may not exceed this many bytes
MAX_PAGE_BYTES = 20 * 1024**2


@dataclass(frozen=True)
class Figure:
    """One figure file and how the page shows it (``src`` relative to the HTML file)."""

    name: str
    src: str
    caption: str
    width: int
    height: int


def save_figure(
    fig: plt.Figure, path: Path, html_dir: Path, caption: str, dpi: float | None = None
) -> Figure:
    """Write ``fig`` as PNG at ``path`` (atomically), close it and describe it for the page.

    ``width``/``height`` are CSS pixels (the PNG's pixel size), so the page lays out before the
    images load.
    """
    dpi = dpi or fig.get_dpi()
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = fig.get_size_inches()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    return Figure(
        name=path.stem,
        src=os.path.relpath(path, html_dir).replace(os.sep, "/"),
        caption=caption,
        width=int(round(w * dpi)),
        height=int(round(h * dpi)),
    )


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(template: str, out: Path, figures: list[Figure], **context: Any) -> Path:
    """Render ``template`` to ``out`` and check the page stays under :data:`MAX_PAGE_BYTES`.

    Raises
    ------
    pipeline.errors.StageError
        The HTML and its figures together exceed the size limit.
    """
    context.setdefault("version", __version__)
    context.setdefault("generated", _dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    html = _environment().get_template(template).render(**context)
    total = len(html.encode()) + sum(
        (out.parent / f.src).stat().st_size for f in figures if (out.parent / f.src).exists()
    )
    if total > MAX_PAGE_BYTES:
        raise StageError(
            f"report {out}: {total / 1024**2:.1f} MB with its figures, over the "
            f"{MAX_PAGE_BYTES / 1024**2:.0f} MB limit"
        )
    write_text(out, html)
    logger.info("report written: %s (%.1f MB with figures)", out, total / 1024**2)
    return out
