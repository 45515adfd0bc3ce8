r"""Evaluation of a trained :class:`~pipeline.models.VAE`: reconstruction, invariance of
:math:`\mu`, site predictability, latent traversals and samples.

What :func:`vae_report` measures (all written into the run's ``metrics.json``):

- **Reconstruction** (:func:`reconstruction_metrics`): per-voxel MSE of
  :math:`\hat x(\mu(x))` against :math:`x` (the z-scored, padded input grid) and the mean 3-D SSIM
  (:func:`ssim3d`).
- **Invariance of** :math:`\mu` (:func:`mu_invariance`): the relative change
  :math:`\lVert\mu(g x) - \mu(x)\rVert / \lVert\mu(x)\rVert` per volume, averaged (and maximised)
  over the 23 non-trivial rotations of the cube (exact index permutations of the input grid; zero
  up to rounding for an ``octahedral`` encoder) and over intensity gauges — gain, a monotone
  (power-law) contrast change and a smooth bias field — applied to the *raw* image before the
  per-volume normalisation, i.e. to the whole path scanner intensities → :math:`\mu`.
  The gain row is exact by construction: :func:`~pipeline.models.data.prepare_volume` z-scores
  every volume, so a gain cancels before the encoder sees it (the measured change is rounding).
- **Invariance beyond the construction**: :func:`mu_so3_invariance` — μ's movement under
  *arbitrary* SO(3) rotations (quintic-spline resampling, the harness of
  :func:`pipeline.symmetry.so3_invariance`: error and round-trip floor in units of μ's spread
  across inputs), on the subjects' volumes and on band-limited volumes of the same grid; and
  :func:`mu_pose_invariance` — real head poses through the pipeline: μ of each subject's
  template-space output (registered) and of its native image put on the template grid by its
  header only (native, unregistered), against μ of its un-posed ground truth
  (``sourcedata/groundtruth/``, demo datasets only).
- **Site predictability** (:func:`site_predictability`): stratified K-fold balanced accuracy of a
  logistic regression predicting the site from :math:`\mu`, chance level :math:`1/n_\text{sites}`
  beside it, and the same after ComBat on :math:`\mu` (fitted on each training fold only).
- **Figures**: latent traversals :math:`\hat x(\bar\mu + t\,e_j)` along the most informative latent
  dimensions (largest KL to the prior) and samples :math:`\hat x(z)`, :math:`z\sim\mathcal N(0,I)`;
  one axial mid-slice per panel.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.errors import SymprepError
from pipeline.io import atomic_path
from pipeline.models.device import autocast as _autocast

__all__ = [
    "latent_traversal_figure",
    "mu_invariance",
    "mu_pose_invariance",
    "mu_so3_invariance",
    "reconstruction_metrics",
    "samples_figure",
    "site_predictability",
    "ssim3d",
    "vae_report",
]

logger = logging.getLogger(__name__)

#: figure files written beside ``metrics.json`` (keys of ``metrics["figures"]``)
FIGURES = {"latent_traversals": "latent_traversals.png", "samples": "samples.png"}


def ssim3d(
    x: np.ndarray,
    y: np.ndarray,
    data_range: float | None = None,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    r"""Mean structural similarity (Wang et al. 2004) of two 3-D volumes.

    .. math::

        \mathrm{SSIM} = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
                             {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)},
        \qquad C_i = (k_i R)^2,

    with local statistics over a ``win_size``³ uniform window (sample covariance), averaged over
    the voxels whose window lies inside the volume. This is what
    ``skimage.metrics.structural_similarity(x, y, data_range=R, channel_axis=None)`` computes with
    its defaults; it is written out here because scikit-image is not a dependency of symprep.

    Parameters
    ----------
    x, y : numpy.ndarray
        Reference and test volume, same 3-D shape.
    data_range : float, optional
        :math:`R`; default the reference's range ``x.max() - x.min()`` (1 if constant).
    win_size : int, default=7
        Window side; reduced to the largest odd side that fits volumes smaller than it.
    k1, k2 : float, default=0.01, 0.03
        Stabilising constants.

    Returns
    -------
    float
        In :math:`[-1, 1]`; 1 for identical volumes.
    """
    from scipy.ndimage import uniform_filter

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 3 or x.shape != y.shape:
        raise ValueError(f"ssim3d needs two 3-D volumes of one shape; got {x.shape} and {y.shape}")
    win = min(win_size, *x.shape)
    win -= 1 - win % 2  # odd
    if win < 3:
        raise ValueError(f"ssim3d needs volumes of side >= 3; got {x.shape}")
    rng = float(x.max() - x.min()) if data_range is None else float(data_range)
    rng = rng if rng > 0 else 1.0
    n = win**3
    cov = n / (n - 1)
    ux, uy = uniform_filter(x, win), uniform_filter(y, win)
    vx = cov * (uniform_filter(x * x, win) - ux * ux)
    vy = cov * (uniform_filter(y * y, win) - uy * uy)
    vxy = cov * (uniform_filter(x * y, win) - ux * uy)
    c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    p = (win - 1) // 2
    return float(s[p:-p, p:-p, p:-p].mean())


def _volumes(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, list | tuple) else batch


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Disable TF32 in CUDA convolutions and matmuls for the block (invariance is measured at
    float32 precision; TF32 would add ~1e-3 relative noise)."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


@torch.no_grad()
def reconstruction_metrics(
    model: torch.nn.Module,
    data: Dataset,
    device: torch.device,
    batch_size: int = 4,
    amp: bool = True,
    ssim: bool = True,
) -> dict[str, float]:
    """Eval-mode loss terms of ``model`` on ``data`` (volumes, or ``(volume, …)`` items).

    Returns
    -------
    dict
        ``loss`` (β-weighted negative ELBO per voxel with :math:`z = \\mu`), ``recon`` (=
        reconstruction MSE per voxel), ``kl`` (per voxel), and with ``ssim=True`` also ``mse`` (=
        ``recon``) and ``ssim`` (mean :func:`ssim3d` over volumes and channels) instead of
        ``recon``. Empty for an empty dataset.
    """
    model.eval()
    sums = {"loss": 0.0, "recon": 0.0, "kl": 0.0}
    scores: list[float] = []
    n = 0
    for batch in DataLoader(data, batch_size=batch_size):
        x = _volumes(batch).to(device, non_blocking=True)
        with _autocast(device, amp):
            terms = model.loss(x)
            xhat = model.decode(model.encode(x)[0]).float() if ssim else None
        for k in sums:
            sums[k] += float(terms[k]) * len(x)
        n += len(x)
        if xhat is not None:
            a, b = x.float().cpu().numpy(), xhat.cpu().numpy()
            scores += [ssim3d(a[i, c], b[i, c]) for i in range(len(a)) for c in range(a.shape[1])]
    if not n:
        return {}
    out = {k: v / n for k, v in sums.items()}
    if ssim:
        out["mse"] = out.pop("recon")
        out["ssim"] = float(np.mean(scores))
    return out


def _relative_change(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (a - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp(min=1e-12)


def _summary(errors: torch.Tensor) -> dict[str, float]:
    e = errors.double()
    return {"mean": float(e.mean()), "max": float(e.max()), "median": float(e.median())}


def _gauges(img: Any) -> dict[str, list]:
    """The intensity gauges applied to a raw image (two or one strengths each)."""
    from pipeline.symmetry import BiasField, Gain, MonotoneContrast

    data = np.asarray(img.dataobj, dtype=np.float32)
    ref = float(np.percentile(data[data > 0], 99)) if (data > 0).any() else 1.0
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    return {
        "gain": [Gain(0.5), Gain(2.0)],
        "contrast": [MonotoneContrast(0.7, ref), MonotoneContrast(1.4, ref)],
        "bias_field": [BiasField((0.3, -0.2, 0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), spacing)],
    }


@torch.no_grad()
def mu_invariance(
    model: torch.nn.Module,
    volumes: torch.Tensor,
    paths: Sequence[str | os.PathLike[str]] | None,
    device: torch.device,
    downsample: int = 1,
    batch_size: int = 4,
    progress: bool = False,
) -> dict[str, Any]:
    r"""Relative change of :math:`\mu` under the cube rotations and the intensity gauges.

    Parameters
    ----------
    model : VAE
        In eval mode, float32, TF32 off (see :func:`full_precision`).
    volumes : torch.Tensor
        Prepared inputs ``(N, C, n, n, n)`` (cube rotations act on these).
    paths : sequence of path-like, optional
        The raw images behind ``volumes``; the gauges act on them before
        :func:`~pipeline.models.data.prepare_volume`. ``None`` skips the gauges.
    downsample : int, default=1
        As used to prepare ``volumes``.

    Returns
    -------
    dict
        ``{"cube_rotations" | "gain" | "contrast" | "bias_field": {"mean", "max", "median"}}`` over
        volumes and group elements, plus ``n_volumes``.
    """
    from tqdm.auto import tqdm

    from pipeline.io import check_image
    from pipeline.models.data import prepare_volume
    from pipeline.symmetry import cube_rotations

    model.eval()
    rotations = cube_rotations()[1:]
    rot_errs = []
    for start in tqdm(
        range(0, len(volumes), batch_size), desc="mu invariance", disable=not progress
    ):
        x = volumes[start : start + batch_size].to(device)
        mu = model(x).float()
        rot_errs += [_relative_change(model(g(x)).float(), mu) for g in rotations]
    out: dict[str, Any] = {"n_volumes": len(volumes)}
    if rot_errs:
        out["cube_rotations"] = _summary(torch.cat(rot_errs))
    if paths is None:
        return out
    levels = int(getattr(model, "levels", 0))
    gauge_errs: dict[str, list[torch.Tensor]] = {}
    for i, path in enumerate(paths):
        img = check_image(path)
        raw = np.asarray(img.get_fdata(dtype=np.float32))
        x = volumes[i : i + 1].to(device)
        mu = model(x).float()
        for name, actions in _gauges(img).items():
            for g in actions:
                gx = prepare_volume(np.asarray(g(raw), np.float32), levels, downsample)
                err = _relative_change(model(gx[None].to(device)).float(), mu)
                gauge_errs.setdefault(name, []).append(err)
    out.update({k: _summary(torch.cat(v)) for k, v in gauge_errs.items()})
    if "gain" in out:
        out["gain"]["note"] = GAIN_NOTE
    return out


#: recorded beside the gain row of :func:`mu_invariance`
GAIN_NOTE = "exact by construction: prepare_volume z-scores each volume, so a gain cancels"


@torch.no_grad()
def mu_so3_invariance(
    model: torch.nn.Module,
    volumes: torch.Tensor,
    n_rotations: int = 3,
    seed: int = 0,
    max_volumes: int = 8,
    batch_size: int = 4,
) -> dict[str, Any]:
    r"""μ's movement under random SO(3) rotations, in units of μ's spread across inputs.

    :func:`pipeline.symmetry.so3_invariance` with Haar-random rotations (quintic B-splines about
    the grid centre, the round-trip floor beside the error), on

    - ``subjects``: the first ``max_volumes`` prepared volumes (brain images: their edges are
      not band-limited, so the floor is higher);
    - ``band_limited``: as many :func:`pipeline.symmetry.smooth_volumes` of the same grid (the
      encoder's own property, resolvable down to a floor of ~1e-4).

    Returns
    -------
    dict
        ``{"subjects" | "band_limited": {"error", "floor", "spread", "ratio"}, "n_rotations",
        "n_volumes"}``.
    """
    from pipeline.symmetry import random_rotations, smooth_volumes, so3_invariance

    model.eval()
    p = next(model.parameters())
    x = volumes[:max_volumes].to(device=p.device, dtype=p.dtype)
    rotations = random_rotations(n_rotations, seed=seed + 100)
    out: dict[str, Any] = {"n_rotations": n_rotations, "n_volumes": len(x)}
    if len(x) < 2:
        out["reason"] = "needs at least two volumes (the spread needs pairs)"
        return out
    smooth = smooth_volumes(len(x), x.shape[-3:], channels=x.shape[1], seed=seed, dtype=p.dtype)
    for name, inputs in (("subjects", x), ("band_limited", smooth.to(p.device))):
        res = so3_invariance(model, inputs, rotations, batch_size=batch_size).as_dict()
        res.pop("per_rotation")
        out[name] = res
    return out


def _on_grid(img: Any, ref: Any) -> np.ndarray:
    """``img``'s data resampled (trilinear, by world coordinates) onto ``ref``'s voxel grid."""
    from scipy import ndimage

    data = np.asarray(img.get_fdata(dtype=np.float32))
    if img.shape[:3] == ref.shape[:3] and np.allclose(img.affine, ref.affine, atol=1e-4):
        return data
    vox = np.linalg.inv(img.affine) @ ref.affine
    return ndimage.affine_transform(
        data, vox[:3, :3], vox[:3, 3], output_shape=ref.shape[:3], order=1, cval=0.0
    ).astype(np.float32)


@torch.no_grad()
def mu_pose_invariance(
    model: torch.nn.Module,
    bids_dir: str | os.PathLike[str],
    derivatives_dir: str | os.PathLike[str],
    labels: Sequence[str],
    pattern: str,
    levels: int,
    downsample: int = 1,
    max_subjects: int = 16,
) -> dict[str, Any]:
    r"""μ under real head poses through the pipeline, against the un-posed ground truth.

        For each subject of a demo dataset (``sourcedata/groundtruth/sub-*/…desc-unposed_T1w``: the
        subject's anatomy and monotone gauge on the template grid, no pose, bias or noise), μ of

        - ``registered``: the pipeline's template-space output (``pattern`` under
          ``derivatives_dir``), and
        - ``native``: the raw T1w put on the template grid by its header alone (the pose left in),

        is compared with μ of the ground truth: the relative change
        :math:`\lVert\mu(x) - \mu(x_0)
    Vert / \lVert\mu(x_0)
    Vert` (mean, median, max) and the RMS
        change in units of the ground truths' spread across subjects (``spread_units``). All inputs go
        through :func:`~pipeline.models.data.prepare_volume`.

        Returns
        -------
        dict
            ``registered``, ``native`` (each ``mean``, ``median``, ``max``, ``spread_units``),
            ``n_subjects``; or ``reason`` when no subject has a ground truth.
    """
    import nibabel as nib

    from pipeline.models.data import prepare_volume

    model.eval()
    p = next(model.parameters())
    bids, deriv = Path(bids_dir), Path(derivatives_dir)
    mus: dict[str, list[torch.Tensor]] = {"truth": [], "registered": [], "native": []}
    for label in labels:
        if len(mus["truth"]) >= max_subjects:
            break
        sub = f"sub-{label}"
        truth = (
            bids
            / "sourcedata"
            / "groundtruth"
            / sub
            / (f"{sub}_space-MNI152NLin2009aSym_desc-unposed_T1w.nii.gz")
        )
        out_path = deriv / pattern.format(label=label)
        raw = bids / sub / "anat" / f"{sub}_T1w.nii.gz"
        if not (truth.exists() and out_path.exists() and raw.exists()):
            continue
        ref = nib.load(truth)
        for key, img in (
            ("truth", ref),
            ("registered", nib.load(out_path)),
            ("native", nib.load(raw)),
        ):
            x = prepare_volume(_on_grid(img, ref), levels, downsample)
            mus[key].append(model(x[None].to(device=p.device, dtype=p.dtype)).double().cpu())
    n = len(mus["truth"])
    out: dict[str, Any] = {"n_subjects": n}
    if n == 0:
        out["reason"] = "no subject with a ground truth (sourcedata/groundtruth/) and an output"
        return out
    mu0 = torch.cat(mus["truth"])
    spread = float(torch.pdist(mu0).pow(2).mean().sqrt()) if n > 1 else float("nan")
    for key in ("registered", "native"):
        mu = torch.cat(mus[key])
        entry = _summary(_relative_change(mu, mu0))
        rms = float((mu - mu0).pow(2).sum(1).mean().sqrt())
        entry["spread_units"] = rms / spread if spread > 0 else None
        out[key] = entry
    return out


def site_predictability(
    mu: np.ndarray, sites: Sequence[Any], seed: int = 0, n_splits: int = 5
) -> dict[str, Any]:
    """Cross-validated balanced accuracy of predicting the site from :math:`\\mu`.

    :func:`pipeline.gauge.site_prediction` with a standardised logistic regression (stratified
    K-fold, ``n_splits`` reduced to the smallest site size, out-of-fold predictions giving one
    balanced accuracy), without and with ComBat on :math:`\\mu` fitted inside each training fold.

    Returns
    -------
    dict
        ``balanced_accuracy``, ``balanced_accuracy_combat`` (None when ComBat cannot be fitted),
        ``chance`` (:math:`1/n_\\text{sites}`), ``n_splits``, ``n_subjects``, ``n_sites``; with
        fewer than two sites or a site of one subject the accuracies are None and ``reason``
        says why.
    """
    from pipeline.gauge import ComBat, site_prediction

    X = np.asarray(mu, dtype=np.float64)
    y = np.asarray(sites).astype(str)
    labels, counts = np.unique(y, return_counts=True)
    out: dict[str, Any] = {
        "balanced_accuracy": None,
        "balanced_accuracy_combat": None,
        "chance": 1.0 / len(labels) if len(labels) else None,
        "n_splits": 0,
        "n_subjects": len(y),
        "n_sites": len(labels),
    }
    k = int(min(n_splits, counts.min())) if len(labels) else 0
    if len(labels) < 2 or k < 2:
        out["reason"] = "needs at least two sites with two subjects each"
        return out
    out["n_splits"] = k

    def _score(harmonizer) -> float:
        result = site_prediction(
            X,
            y,
            harmonizer=harmonizer,
            n_splits=k,
            n_permutations=0,
            max_features=X.shape[1],
            seed=seed,
            classifier="logistic",
        )
        return float(result["balanced_accuracy"])

    out["balanced_accuracy"] = _score(None)
    try:
        out["balanced_accuracy_combat"] = _score(ComBat())
    except (SymprepError, ValueError, np.linalg.LinAlgError) as exc:  # e.g. a tiny site
        out["combat_reason"] = str(exc)
        logger.warning("site prediction after ComBat on mu skipped: %s", exc)
    return out


def _mid_slice(vol: np.ndarray) -> np.ndarray:
    """Axial mid-slice of ``(C, X, Y, Z)`` (first channel), oriented for ``imshow``."""
    return vol[0, :, :, vol.shape[-1] // 2].T


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


@torch.no_grad()
def latent_traversal_figure(
    model: torch.nn.Module,
    mu: torch.Tensor,
    kl_per_dim: np.ndarray,
    path: str | os.PathLike[str],
    n_dims: int = 4,
    steps: Sequence[float] = (-2.0, -1.0, 0.0, 1.0, 2.0),
) -> dict[str, Any]:
    r"""Decode :math:`\bar\mu + t\,e_j` for the ``n_dims`` dimensions with the largest KL and each
    ``t`` in ``steps`` (prior standard deviations); one axial mid-slice per panel, a last column
    with the difference between the extreme steps.

    Returns
    -------
    dict
        ``file`` (the PNG's name), ``dims`` and ``steps``.
    """
    from matplotlib.figure import Figure

    device = next(model.parameters()).device
    dims = [int(j) for j in np.argsort(-np.asarray(kl_per_dim), kind="stable")[:n_dims]]
    centre = mu.float().mean(0)
    rows = []
    for j in dims:
        z = centre.repeat(len(steps), 1)
        z[:, j] += torch.as_tensor(steps, dtype=z.dtype)
        rows.append(model.decode(z.to(device)).float().cpu().numpy())
    slices = [[_mid_slice(v) for v in row] for row in rows]
    flat = np.concatenate([s.ravel() for row in slices for s in row])
    vmin, vmax = np.percentile(flat, [1, 99])
    fig = Figure(figsize=(1.6 * (len(steps) + 1), 1.6 * len(dims) + 0.4))
    axes = fig.subplots(len(dims), len(steps) + 1, squeeze=False)
    for r, (j, row) in enumerate(zip(dims, slices, strict=True)):
        for c, (t, s) in enumerate(zip(steps, row, strict=True)):
            axes[r, c].imshow(s, cmap="gray", origin="lower", vmin=vmin, vmax=vmax)
            if r == 0:
                axes[r, c].set_title(f"t = {t:+g}", fontsize=8)
        diff = row[-1] - row[0]
        lim = float(np.abs(diff).max()) or 1.0
        axes[r, -1].imshow(diff, cmap="RdBu_r", origin="lower", vmin=-lim, vmax=lim)
        if r == 0:
            axes[r, -1].set_title("last − first", fontsize=8)
        axes[r, 0].set_ylabel(f"z{j}\nKL {kl_per_dim[j]:.2g}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("VAE latent traversals (axial mid-slice)", fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))
    return {"file": Path(path).name, "dims": dims, "steps": [float(t) for t in steps]}


@torch.no_grad()
def samples_figure(
    model: torch.nn.Module, path: str | os.PathLike[str], n: int = 16, seed: int = 0
) -> dict[str, Any]:
    r"""Decode ``n`` draws :math:`z \sim \mathcal N(0, I)` (seeded) and show a grid of axial
    mid-slices.

    Returns
    -------
    dict
        ``file`` (the PNG's name), ``n`` and ``seed``.
    """
    from matplotlib.figure import Figure

    vols = model.sample(n, generator=torch.Generator().manual_seed(seed)).float().cpu().numpy()
    slices = [_mid_slice(v) for v in vols]
    vmin, vmax = np.percentile(np.concatenate([s.ravel() for s in slices]), [1, 99])
    cols = int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / cols))
    fig = Figure(figsize=(1.6 * cols, 1.6 * nrows + 0.4))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, s in zip(axes.ravel(), slices, strict=False):
        ax.imshow(s, cmap="gray", origin="lower", vmin=vmin, vmax=vmax)
    fig.suptitle("VAE samples, z ~ N(0, I) (axial mid-slice)", fontsize=9)
    fig.tight_layout()
    _save(fig, Path(path))
    return {"file": Path(path).name, "n": n, "seed": seed}


def vae_report(
    model: torch.nn.Module,
    volumes: torch.Tensor,
    sites: Sequence[Any],
    train_idx: Sequence[int],
    test_idx: Sequence[int],
    out_dir: str | os.PathLike[str],
    device: torch.device,
    paths: Sequence[str | os.PathLike[str]] | None = None,
    downsample: int = 1,
    batch_size: int = 4,
    seed: int = 0,
    max_invariance_volumes: int = 16,
    progress: bool = False,
    pose_inputs: dict[str, Any] | None = None,
    so3_rotations: int = 3,
) -> dict[str, Any]:
    """Invariance, site predictability, latent statistics and the two figures of a trained VAE.

    Parameters
    ----------
    model : VAE
        Trained (left in eval mode).
    volumes : torch.Tensor
        Every participant's prepared volume ``(N, C, n, n, n)``.
    sites : sequence
        Site of each volume.
    train_idx, test_idx : sequence of int
        The split (positions into ``volumes``).
    out_dir : path-like
        Where the figures go (beside ``metrics.json``).
    device : torch.device
        Where to compute.
    paths : sequence of path-like, optional
        Raw images of ``volumes`` (for the intensity gauges).
    downsample : int, default=1
        As used to prepare ``volumes``.
    batch_size : int, default=4
        Volumes per forward pass.
    seed : int, default=0
        Seed of the CV folds and of the samples.
    max_invariance_volumes : int, default=16
        Volumes (test part first) used for the invariance measures.
    pose_inputs : dict, optional
        ``bids_dir``, ``derivatives_dir``, ``labels``, ``pattern`` for
        :func:`mu_pose_invariance` (skipped when None or without a ground truth).
    so3_rotations : int, default=3
        Random rotations of :func:`mu_so3_invariance` (0 skips it).

    Returns
    -------
    dict
        ``latent`` (``dim``, ``kl_per_dim``), ``invariance`` (see :func:`mu_invariance`; with
        ``so3`` from :func:`mu_so3_invariance`), ``pose_invariance`` (with ``pose_inputs``),
        ``site_prediction`` (see :func:`site_predictability`) and ``figures`` (PNG names relative
        to ``out_dir``, with what they show).
    """
    out = Path(out_dir)
    model.eval()
    train_idx, test_idx = list(map(int, train_idx)), list(map(int, test_idx))
    with full_precision(), torch.no_grad():
        mus, logvars = [], []
        for start in range(0, len(volumes), batch_size):
            mu, logvar = model.encode(volumes[start : start + batch_size].to(device))
            mus.append(mu.float().cpu())
            logvars.append(logvar.float().cpu())
        mu, logvar = torch.cat(mus), torch.cat(logvars)
        ref = train_idx or list(range(len(volumes)))
        kl = 0.5 * (mu[ref] ** 2 + logvar[ref].exp() - logvar[ref] - 1).mean(0).numpy()
        inv_idx = (test_idx + train_idx)[:max_invariance_volumes]
        invariance = mu_invariance(
            model,
            volumes[inv_idx],
            [paths[i] for i in inv_idx] if paths is not None else None,
            device,
            downsample,
            batch_size,
            progress,
        )
        if so3_rotations:
            invariance["so3"] = mu_so3_invariance(
                model, volumes[inv_idx], so3_rotations, seed, batch_size=batch_size
            )
        pose = None
        if pose_inputs is not None:
            pose = mu_pose_invariance(
                model, levels=int(getattr(model, "levels", 0)), downsample=downsample,
                **pose_inputs,
            )  # fmt: skip
        figures = {
            "latent_traversals": latent_traversal_figure(
                model, mu[ref], kl, out / FIGURES["latent_traversals"]
            ),
            "samples": samples_figure(model, out / FIGURES["samples"], seed=seed),
        }
    return {
        "latent": {"dim": int(mu.shape[1]), "kl_per_dim": [float(v) for v in kl]},
        "invariance": invariance,
        **({"pose_invariance": pose} if pose is not None else {}),
        "site_prediction": site_predictability(mu.numpy(), sites, seed),
        "figures": figures,
    }
