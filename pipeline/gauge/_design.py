"""Design matrices of ComBat: site indicators and encoded covariates.

.. math::

    D = [\\,E_{\\text{site}} \\mid C\\,],\\qquad
    C = [\\,\\text{one-hot}(c_1)_{\\setminus 1} \\mid \\dots \\mid x_1 \\mid \\dots\\,]

``E_site`` holds one indicator column per site (sorted labels). With a reference site its column is
all ones (an intercept), as in neuroCombat. Categorical covariates (``object``, ``string``,
``category`` and ``bool`` dtypes) are one-hot encoded with their first sorted level dropped;
numeric columns are continuous. Categorical columns come first, then continuous ones, each in
the order of the DataFrame, which is neuroCombat's column order when it receives
``categorical_cols`` and ``continuous_cols`` in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.gauge._errors import CovariateError, HarmonizationError, UnseenSiteError


def _plain(value: Any) -> Any:
    """Turn numpy scalars into Python scalars (JSON-serialisable level labels)."""
    return value.item() if isinstance(value, np.generic) else value


def check_batch(batch: Sequence[Any], n_subjects: int) -> np.ndarray:
    """Return the site labels as a 1-D object array of Python scalars, checking their count."""
    labels = np.asarray(batch, dtype=object).ravel()
    if labels.shape[0] != n_subjects:
        raise HarmonizationError(
            f"batch has {labels.shape[0]} labels but X has {n_subjects} subjects (rows)"
        )
    if pd.isna(pd.Series(labels)).any():
        raise HarmonizationError("batch contains missing site labels")
    return np.array([_plain(v) for v in labels], dtype=object)


def site_levels(labels: np.ndarray) -> list[Any]:
    """Sorted distinct site labels (neuroCombat's ``np.unique`` order)."""
    try:
        return [_plain(v) for v in np.unique(labels)]
    except TypeError as exc:  # mixed str / int labels cannot be sorted
        raise HarmonizationError(f"batch mixes label types that cannot be sorted ({exc})") from exc


def site_index(labels: np.ndarray, sites: Sequence[Any]) -> np.ndarray:
    """Index of each subject's site in ``sites`` (unknown sites: :class:`UnseenSiteError`)."""
    lookup = {s: i for i, s in enumerate(sites)}
    unknown = sorted({str(v) for v in labels if v not in lookup})
    if unknown:
        raise UnseenSiteError(
            f"batch contains sites not seen in fit: {', '.join(unknown)} "
            "(use ComBat.add_sites to estimate them)"
        )
    return np.array([lookup[v] for v in labels], dtype=np.intp)


def _is_categorical(series: pd.Series) -> bool:
    dtype = series.dtype
    return (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
    )


def _is_continuous(series: pd.Series) -> bool:
    dtype = series.dtype
    return (
        pd.api.types.is_numeric_dtype(dtype)
        and not pd.api.types.is_bool_dtype(dtype)
        and not pd.api.types.is_complex_dtype(dtype)
    )


@dataclass
class CovariateEncoding:
    """How covariate columns become design columns (fitted once, applied to new subjects).

    Attributes
    ----------
    categorical : dict of str to list
        Column name → sorted levels; the first level is the dropped reference.
    continuous : list of str
        Continuous column names.
    """

    categorical: dict[str, list[Any]] = field(default_factory=dict)
    continuous: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """Names of the design columns the covariates produce."""
        names = [f"{c}[{lvl}]" for c, levels in self.categorical.items() for lvl in levels[1:]]
        return names + list(self.continuous)

    @classmethod
    def fit(cls, covariates: pd.DataFrame | None, n_subjects: int) -> CovariateEncoding:
        """Choose the encoding of each column from its dtype."""
        enc = cls()
        if covariates is None:
            return enc
        frame = _check_frame(covariates, n_subjects)
        for name in frame.columns:
            col = frame[name]
            if _is_continuous(col):
                enc.continuous.append(str(name))
            elif _is_categorical(col):
                values = col.astype(object).to_numpy()
                try:
                    levels = np.unique(values)
                except TypeError as exc:
                    raise CovariateError(
                        f"covariate '{name}' mixes value types that cannot be sorted ({exc})"
                    ) from exc
                enc.categorical[str(name)] = [_plain(v) for v in levels]
            else:
                raise CovariateError(
                    f"covariate '{name}' has unsupported dtype {col.dtype}; "
                    "expected numeric (continuous) or object/string/category/bool (categorical)"
                )
        return enc

    def transform(self, covariates: pd.DataFrame | None, n_subjects: int) -> np.ndarray:
        """Encode ``covariates`` into an ``(n_subjects, n_columns)`` float64 matrix."""
        if not self.categorical and not self.continuous:
            if covariates is not None and len(covariates.columns):
                raise CovariateError(
                    f"covariates has columns {list(covariates.columns)} but the model was fitted "
                    "without covariates"
                )
            return np.zeros((n_subjects, 0))
        if covariates is None:
            raise CovariateError(f"covariates is required: the model was fitted with {self.names}")
        frame = _check_frame(covariates, n_subjects)
        missing = [c for c in self.names if c not in frame.columns]
        if missing:
            raise CovariateError(f"covariates lacks the fitted column(s) {missing}")
        blocks: list[np.ndarray] = []
        for name, levels in self.categorical.items():
            values = [_plain(v) for v in frame[name].astype(object).to_numpy()]
            lookup = {lvl: i for i, lvl in enumerate(levels)}
            unseen = sorted({str(v) for v in values if v not in lookup})
            if unseen:
                raise CovariateError(
                    f"covariate '{name}' has level(s) {unseen} not seen in fit (known: {levels})"
                )
            codes = np.array([lookup[v] for v in values], dtype=np.intp)
            onehot = np.zeros((n_subjects, len(levels)))
            onehot[np.arange(n_subjects), codes] = 1.0
            blocks.append(onehot[:, 1:])
        for name in self.continuous:
            col = frame[name]
            if not _is_continuous(col):
                raise CovariateError(f"covariate '{name}' was continuous in fit, got {col.dtype}")
            blocks.append(col.to_numpy(dtype=np.float64).reshape(-1, 1))
        return np.hstack(blocks)

    @property
    def names(self) -> list[str]:
        """Covariate column names used by the model."""
        return list(self.categorical) + list(self.continuous)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable description (stored in the model sidecar)."""
        return {"categorical": self.categorical, "continuous": self.continuous}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> CovariateEncoding:
        """Inverse of :meth:`to_json`."""
        return cls(categorical=dict(obj["categorical"]), continuous=list(obj["continuous"]))


def _check_frame(covariates: pd.DataFrame, n_subjects: int) -> pd.DataFrame:
    if not isinstance(covariates, pd.DataFrame):
        raise CovariateError(
            f"covariates must be a pandas DataFrame, got {type(covariates).__name__}"
        )
    if len(covariates) != n_subjects:
        raise HarmonizationError(
            f"covariates has {len(covariates)} rows but X has {n_subjects} subjects (rows)"
        )
    bad = [str(c) for c in covariates.columns if covariates[c].isna().any()]
    if bad:
        raise CovariateError(f"covariate column(s) {bad} contain missing values")
    return covariates


def site_design(site_idx: np.ndarray, n_sites: int, ref_level: int | None) -> np.ndarray:
    """Site part of the design: indicators, with the reference column set to ones."""
    onehot = np.zeros((site_idx.shape[0], n_sites))
    onehot[np.arange(site_idx.shape[0]), site_idx] = 1.0
    if ref_level is not None:
        onehot[:, ref_level] = 1.0
    return onehot


def hash_mask(mask: np.ndarray) -> str:
    """SHA-256 of a boolean feature mask (its length and packed bits)."""
    import hashlib

    h = hashlib.sha256(str(mask.shape[0]).encode())
    h.update(np.packbits(mask.astype(bool)).tobytes())
    return h.hexdigest()
