"""Orthogonal slice mosaics of 3-D volumes (background, contours, heat overlay) with matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

#: axis (RAS voxel axis cut through) and label of the three mosaic rows
VIEWS = ((2, "axial"), (1, "coronal"), (0, "sagittal"))


@dataclass(frozen=True)
class Contour:
    """Outline of ``data > level`` drawn in ``color``."""

    data: np.ndarray
    color: str
    level: float = 0.5
    label: str = ""


def canonical(img: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, tuple[float, ...]]:
    """Voxel array in RAS+ orientation (first volume of a 4-D image) and its voxel sizes."""
    img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    return np.nan_to_num(data), tuple(float(z) for z in img.header.get_zooms()[:3])


def cut_indices(extent: np.ndarray, n_cuts: int) -> list[np.ndarray]:
    """For each axis, ``n_cuts`` slice indices spread over the non-zero bounding box of ``extent``.

    The cuts sit at fractions :math:`(k + 1) / (n + 1)` of the box, so no slice is on its border.
    """
    nz = np.argwhere(extent > 0)
    if nz.size == 0:
        lo, hi = np.zeros(3, int), np.asarray(extent.shape) - 1
    else:
        lo, hi = nz.min(axis=0), nz.max(axis=0)
    frac = (np.arange(n_cuts) + 1) / (n_cuts + 1)
    return [np.round(lo[a] + frac * (hi[a] - lo[a])).astype(int) for a in range(3)]


def _slice(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.take(vol, index, axis=axis).T  # rows = the later axis, shown with origin="lower"


def _panel(sl: np.ndarray, zooms2: tuple[float, float], px: int, order: int) -> np.ndarray:
    """Resample a 2-D slice to physical aspect with its longer side about ``px`` pixels."""
    from scipy.ndimage import zoom

    mm = np.asarray(sl.shape) * np.asarray(zooms2)
    factor = px / max(float(mm.max()), 1e-6) * np.asarray(zooms2)
    return zoom(sl.astype(np.float32), factor, order=order, mode="nearest", grid_mode=False)


def _edges(inside: np.ndarray) -> np.ndarray:
    """Boundary pixels of a boolean 2-D region (inside pixels with an outside 4-neighbour)."""
    pad = np.pad(inside, 1, mode="constant")
    core = pad[1:-1, 1:-1]
    neigh = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return core & ~neigh


def mosaic(
    background: np.ndarray,
    zooms: Sequence[float],
    *,
    contours: Sequence[Contour] = (),
    overlay: np.ndarray | None = None,
    overlay_cmap: str = "hot",
    overlay_range: tuple[float, float] | None = None,
    overlay_label: str = "",
    extent: np.ndarray | None = None,
    n_cuts: int = 6,
    panel_px: int = 130,
) -> plt.Figure:
    """Three rows (axial, coronal, sagittal) of ``n_cuts`` slices each, composed as one RGB image.

    The panels are assembled with numpy (one matplotlib axes for the whole mosaic), which is far
    cheaper than one axes per slice.

    Parameters
    ----------
    background : ndarray, shape (X, Y, Z)
        Shown in grey, windowed to its 2nd–98th percentile inside ``extent``.
    zooms : sequence of float
        Voxel sizes (mm), so every panel has its physical aspect ratio.
    contours : sequence of Contour
        Outlines of ``data > level`` drawn over the background (same grid).
    overlay : ndarray, optional
        Heat map drawn where it is non-zero (same grid), with a colour bar.
    extent : ndarray, optional
        Where to place the cuts (non-zero region); default ``background``.
    n_cuts : int, default=6
    panel_px : int, default=130
        Size of the longer side of a panel in pixels.
    """
    from matplotlib import colormaps
    from matplotlib.colors import to_rgb

    extent = background if extent is None else extent
    cuts = cut_indices(extent, n_cuts)
    inside = background[extent > 0] if np.any(extent > 0) else background.ravel()
    vmin, vmax = np.percentile(inside, [2, 98]) if inside.size else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0
    if overlay is not None and overlay_range is None:
        vals = overlay[overlay != 0]
        overlay_range = (
            (float(np.percentile(vals, 2)), float(np.percentile(vals, 98))) if vals.size else (0, 1)
        )
    cmap = colormaps[overlay_cmap]
    rows = []
    for axis, _ in VIEWS:
        z2 = tuple(z for i, z in enumerate(zooms) if i != axis)[::-1]  # slice is transposed
        panels = []
        for index in cuts[axis]:
            bg = _panel(_slice(background, axis, index), z2, panel_px, 1)
            grey = np.clip((bg - vmin) / (vmax - vmin), 0, 1)
            rgb = np.repeat(grey[..., None], 3, axis=2)
            if overlay is not None:
                ov = _panel(_slice(overlay, axis, index), z2, panel_px, 0)
                lo, hi = overlay_range
                colored = cmap(np.clip((ov - lo) / max(hi - lo, 1e-12), 0, 1))[..., :3]
                where = (ov != 0)[..., None]
                rgb = np.where(where, 0.2 * rgb + 0.8 * colored, rgb)
            for c in contours:
                region = _panel(_slice(c.data, axis, index), z2, panel_px, 1) > c.level
                rgb[_edges(region)] = to_rgb(c.color)
            panels.append(rgb[::-1])  # origin at the bottom
        height = max(p.shape[0] for p in panels)
        padded = [np.pad(p, ((0, height - p.shape[0]), (1, 1), (0, 0))) for p in panels]
        rows.append(np.concatenate(padded, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((1, 1), (0, width - r.shape[1]), (0, 0))) for r in rows]
    top = 18 if (contours or overlay is not None) else 0
    image = np.concatenate([np.zeros((top, width, 3)), *rows], axis=0)
    dpi = 100
    fig = plt.figure(figsize=(image.shape[1] / dpi, image.shape[0] / dpi), dpi=dpi)
    fig.patch.set_facecolor("black")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(image, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    y = top
    for (_, name), row in zip(VIEWS, rows, strict=True):
        fig.text(0.003, 1 - (y + 12) / image.shape[0], name, color="white", fontsize=7)
        y += row.shape[0]
    legend = [f"{c.label} ({c.color})" for c in contours if c.label]
    if legend:
        fig.text(0.005, 1 - 13 / image.shape[0], ", ".join(legend), color="white", fontsize=8)
    if overlay is not None:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        cax = fig.add_axes((0.6, 1 - 9 / image.shape[0], 0.3, 5 / image.shape[0]))
        bar = fig.colorbar(
            ScalarMappable(Normalize(*overlay_range), cmap), cax=cax, orientation="horizontal"
        )
        bar.outline.set_edgecolor("white")
        bar.set_ticks(list(overlay_range))
        bar.ax.tick_params(colors="white", labelsize=6, length=2, pad=1)
        fig.text(
            0.59, 1 - 13 / image.shape[0], overlay_label, color="white", fontsize=7, ha="right"
        )
    return fig
