"""Per-image intensity normalization of T1w images (the scanner's intensity gauge).

Each method maps intensities :math:`x` inside a brain mask to a common scale and is invariant to
a family of gauge maps :math:`x \\mapsto g(x)`:

* z-score, :math:`(x - \\mu_{\\text{mask}})/\\sigma_{\\text{mask}}` — any gain/offset
  :math:`g(x) = a x + b`, :math:`a > 0`;
* WhiteStripe (Shinohara 2014), :math:`(x - \\mu_{\\text{ws}})/\\sigma_{\\text{ws}}` over the
  normal-appearing white-matter stripe around the last (T1w) histogram mode — gain/offset;
* FCM, :math:`x / \\mu_{\\text{WM}}` with the fuzzy-c-means white-matter class — gain only
  (an offset changes the ratio; that is the method);
* Nyúl–Udupa, the piecewise-linear map of the image's percentile landmarks onto a standard scale
  fitted on **training images only** — gain/offset exactly, any monotone map at the landmarks.

The methods come from the ``intensity-normalization`` package (3.0.1, installs beside our
numpy/scipy pins), wrapped so that they take numpy arrays or nibabel images in float64, and so that
FCM is seeded (the package's FCM calls ``skfuzzy.cmeans`` unseeded, from the global numpy state:
here ``skfuzzy.cmeans`` is called with a seed and the package's rule — divide by the mean of the
image weighted by the white-matter membership — is applied). The Nyúl standard scale is saved as
NPZ + JSON sidecar (landmark percentiles, scale, training-image count, version).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

import pipeline
from pipeline.errors import ImageError
from pipeline.gauge._errors import HarmonizationError
from pipeline.io import atomic_path, read_json, write_json

ImageLike = np.ndarray | nib.spatialimages.SpatialImage
METHODS = ("zscore", "whitestripe", "fcm", "nyul", "none")


class _Array:
    """The package's image protocol over a float64 array (its own adapter casts to float32)."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = np.asarray(data, dtype=np.float64)

    def get_data(self) -> np.ndarray:
        return self._data

    def with_data(self, data: np.ndarray) -> _Array:
        return _Array(data)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    def save(self, path: str | os.PathLike[str]) -> None:  # pragma: no cover - protocol only
        np.save(path, self._data)


def _data(img: ImageLike, name: str) -> np.ndarray:
    data = np.asarray(img.dataobj if hasattr(img, "dataobj") else img, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise ImageError(f"{name} has NaN or Inf values")
    return data


def _mask(mask: ImageLike | None, data: np.ndarray) -> np.ndarray:
    if mask is None:
        return data > 0
    m = np.asarray(mask.dataobj if hasattr(mask, "dataobj") else mask) > 0
    if m.shape != data.shape:
        raise ImageError(f"mask has shape {m.shape}, image has shape {data.shape}")
    if m.sum() < 10:
        raise ImageError(f"mask has {int(m.sum())} voxels; at least 10 needed to normalize")
    return m


def _like(img: ImageLike, data: np.ndarray) -> ImageLike:
    if isinstance(img, nib.spatialimages.SpatialImage):
        out = nib.Nifti1Image(data.astype(np.float32), img.affine, img.header)
        out.set_data_dtype(np.float32)
        return out
    return data


def _package() -> Any:
    """The ``intensity_normalization`` package, imported on first use (optional dependency)."""
    try:
        from intensity_normalization import NyulNormalizer, WhiteStripeNormalizer, ZScoreNormalizer
        from intensity_normalization.domain.exceptions import NormalizationError
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise HarmonizationError(
            "intensity normalization needs the 'intensity-normalization' package "
            "(pip install intensity-normalization==3.0.1)"
        ) from exc
    return SimpleNamespace(
        NyulNormalizer=NyulNormalizer,
        WhiteStripeNormalizer=WhiteStripeNormalizer,
        ZScoreNormalizer=ZScoreNormalizer,
        NormalizationError=NormalizationError,
    )


def _run(normalizer: Any, img: ImageLike, mask: ImageLike | None) -> ImageLike:
    NormalizationError = _package().NormalizationError
    data = _data(img, "image")
    m = _mask(mask, data)
    try:
        out = normalizer.fit_transform(_Array(data), _Array(m.astype(np.float64))).get_data()
    except NormalizationError as exc:
        raise ImageError(f"intensity normalization failed: {exc}") from exc
    return _like(img, out)


def zscore_normalize(img: ImageLike, mask: ImageLike | None = None) -> ImageLike:
    """Z-score inside ``mask`` (default: voxels > 0)."""
    return _run(_package().ZScoreNormalizer(), img, mask)


def whitestripe_normalize(
    img: ImageLike, mask: ImageLike | None = None, width: float = 0.05
) -> ImageLike:
    """WhiteStripe (T1w: last histogram mode), ``width`` quantile on each side of the mode."""
    return _run(_package().WhiteStripeNormalizer(width=width), img, mask)


def fcm_normalize(
    img: ImageLike, mask: ImageLike | None = None, n_clusters: int = 3, seed: int = 0
) -> ImageLike:
    """Divide by the white-matter mean of a seeded fuzzy-c-means segmentation (brightest class)."""
    from skfuzzy import cmeans

    data = _data(img, "image")
    m = _mask(mask, data)
    fg = data[m]
    centers, u, *_ = cmeans(fg.reshape(1, -1), n_clusters, 2.0, error=0.005, maxiter=50, seed=seed)
    wm = u[int(np.argmax(centers.ravel()))]
    wm_mean = float(np.average(fg, weights=wm))
    if wm_mean == 0:
        raise ImageError("white-matter mean is zero; cannot normalize")
    return _like(img, data / wm_mean)


class NyulStandardizer(BaseEstimator):
    """Nyúl–Udupa histogram standardization; fit on training images only, then apply to all.

    Parameters
    ----------
    min_percentile, max_percentile : float, default=1, 99
        Ends of the intensity range mapped to ``[output_min, output_max]``.
    step : float, default=10
        Spacing of the inner landmark percentiles (10, 20, …, 90).
    output_min, output_max : float, default=1, 100

    Attributes
    ----------
    percentiles_, standard_scale_ : ndarray
        Landmark percentiles and their standard-scale values.
    n_training_images_ : int
    """

    def __init__(
        self,
        min_percentile: float = 1.0,
        max_percentile: float = 99.0,
        step: float = 10.0,
        output_min: float = 1.0,
        output_max: float = 100.0,
    ) -> None:
        self.min_percentile = min_percentile
        self.max_percentile = max_percentile
        self.step = step
        self.output_min = output_min
        self.output_max = output_max

    def _normalizer(self) -> Any:
        return _package().NyulNormalizer(
            output_min_value=self.output_min,
            output_max_value=self.output_max,
            min_percentile=self.min_percentile,
            max_percentile=self.max_percentile,
            percentile_after_min=self.step,
            percentile_before_max=100.0 - self.step,
            percentile_step=self.step,
        )

    def fit(self, images: list[ImageLike], masks: list[ImageLike | None] | None = None) -> Any:
        """Average the training images' landmarks, each rescaled to ``[output_min, output_max]``."""
        if len(images) == 0:
            raise HarmonizationError("NyulStandardizer.fit needs at least one training image")
        masks = [None] * len(images) if masks is None else masks
        if len(masks) != len(images):
            raise HarmonizationError(f"{len(images)} images but {len(masks)} masks")
        arrays, mask_arrays = [], []
        for i, (img, mask) in enumerate(zip(images, masks, strict=True)):
            data = _data(img, f"image {i}")
            arrays.append(_Array(data))
            mask_arrays.append(_Array(_mask(mask, data).astype(np.float64)))
        norm = self._normalizer()
        NormalizationError = _package().NormalizationError
        try:
            norm.fit_population(arrays, mask_arrays)
        except NormalizationError as exc:
            raise ImageError(f"Nyul fit failed: {exc}") from exc
        self.percentiles_ = np.asarray(norm.percentiles, dtype=np.float64)
        self.standard_scale_ = np.asarray(norm.standard_scale, dtype=np.float64)
        self.n_training_images_ = len(images)
        return self

    def transform(self, img: ImageLike, mask: ImageLike | None = None) -> ImageLike:
        """Map the image's landmarks onto the standard scale (linear between, extrapolated)."""
        check_is_fitted(self, "standard_scale_")
        norm = self._normalizer()
        norm._percentiles = self.percentiles_
        norm._standard_scale = self.standard_scale_
        norm.is_fitted = True
        data = _data(img, "image")
        m = _mask(mask, data)
        NormalizationError = _package().NormalizationError
        try:
            out = norm.transform(_Array(data), _Array(m.astype(np.float64))).get_data()
        except (NormalizationError, ValueError) as exc:
            raise ImageError(f"Nyul transform failed: {exc}") from exc
        return _like(img, np.asarray(out, dtype=np.float64))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the standard scale (``.npz``) and a JSON sidecar, atomically."""
        check_is_fitted(self, "standard_scale_")
        path = Path(path).with_suffix(".npz")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, percentiles=self.percentiles_, standard_scale=self.standard_scale_)
        write_json(
            path.with_suffix(".json"),
            {
                "format": "symprep-nyul",
                "format_version": 1,
                "symprep_version": pipeline.__version__,
                "params": self.get_params(),
                "n_training_images": self.n_training_images_,
            },
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NyulStandardizer:
        """Read a standardizer written by :meth:`save`."""
        path = Path(path)
        meta = read_json(path.with_suffix(".json"))
        if meta.get("format") != "symprep-nyul" or meta.get("format_version") != 1:
            raise HarmonizationError("not a version-1 symprep Nyul model", path)
        est = cls(**meta["params"])
        with np.load(path) as arrays:
            est.percentiles_ = arrays["percentiles"]
            est.standard_scale_ = arrays["standard_scale"]
        est.n_training_images_ = int(meta["n_training_images"])
        return est


def normalize_t1w(
    img: ImageLike,
    mask: ImageLike | None,
    method: str,
    nyul: NyulStandardizer | None = None,
) -> ImageLike:
    """Normalize one T1w image with ``method`` (one of :data:`METHODS`)."""
    if method == "zscore":
        return zscore_normalize(img, mask)
    if method == "whitestripe":
        return whitestripe_normalize(img, mask)
    if method == "fcm":
        return fcm_normalize(img, mask)
    if method == "nyul":
        if nyul is None:
            raise HarmonizationError("method 'nyul' needs a fitted NyulStandardizer (nyul=...)")
        return nyul.transform(img, mask)
    if method == "none":
        return img
    raise HarmonizationError(f"intensity method must be one of {METHODS}, got {method!r}")
