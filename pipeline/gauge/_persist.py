"""Save and load fitted :class:`~pipeline.gauge.ComBat` models: NPZ arrays + a JSON sidecar.

:func:`write_checked` and :func:`read_checked` are the file layout both the models and the
distributed site-statistics files (:mod:`._distributed`) use: an NPZ written atomically, and a
sidecar naming its format and version and the NPZ's SHA-256, checked on reading.

``model.npz`` holds the per-feature arrays; ``model.json`` holds what a person or a later run
needs to check the model applies: format version, symprep version, parameters, site list (and
which sites were added later), subjects per site, covariate encoding, number of features, the
SHA-256 of the feature mask (non-constant features) and the SHA-256 of the NPZ file itself, so a
sidecar that does not belong to its arrays is detected. Both files are written atomically.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import pipeline
from pipeline.gauge._design import CovariateEncoding
from pipeline.gauge._design import hash_mask as _hash_mask
from pipeline.gauge._errors import HarmonizationError
from pipeline.io import atomic_path, read_json, write_json

if TYPE_CHECKING:  # the model class is passed in: this module never imports it (no cycle)
    from pipeline.gauge._combat import ComBat

#: the sidecar's format name, and the version of the on-disk layout (bump when arrays or sidecar
#: keys change meaning)
FORMAT, FORMAT_VERSION = "symprep-combat", 1
_ARRAYS = (
    "beta_",
    "grand_mean_",
    "var_pooled_",
    "gamma_hat_",
    "delta_hat_",
    "gamma_star_",
    "delta_star_",
    "constant_features_",
)
_PARAMS = (
    "parametric",
    "eb",
    "mean_only",
    "ref_batch",
    "max_nonparametric_features",
    "min_new_site_subjects",
)


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """The JSON sidecar beside a model file (``model.npz`` → ``model.json``)."""
    return Path(path).with_suffix(".json")


def npz_path(path: str | os.PathLike[str]) -> Path:
    """``path`` with ``.npz`` appended unless it already ends so."""
    path = Path(path)
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def write_checked(
    path: str | os.PathLike[str],
    arrays: dict[str, np.ndarray],
    sidecar: dict[str, Any],
    compressed: bool = False,
) -> Path:
    """Write ``arrays`` to ``path`` (NPZ, atomically) and ``sidecar`` (with the NPZ's SHA-256
    added as ``arrays_sha256``) beside it; return the NPZ path."""
    path = npz_path(path)
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    data = buf.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    write_json(sidecar_path(path), {**sidecar, "arrays_sha256": hashlib.sha256(data).hexdigest()})
    return path


def read_checked(
    path: str | os.PathLike[str], fmt: str, version: int, what: str
) -> tuple[dict[str, Any], bytes]:
    """The sidecar and the NPZ bytes of a file :func:`write_checked` wrote, after checking that
    both exist, that the sidecar's ``format`` is ``fmt`` at ``version``, and the SHA-256.

    Parameters
    ----------
    path : path-like
        The NPZ file.
    fmt, version : str, int
        Expected ``format`` and ``format_version`` of the sidecar.
    what : str
        What the file holds, for the messages (e.g. ``"ComBat model"``).
    """
    path = Path(path)
    sidecar = sidecar_path(path)
    if not path.is_file():
        raise HarmonizationError(f"{what} file does not exist", path)
    if not sidecar.is_file():
        raise HarmonizationError(f"{what} sidecar {sidecar.name} is missing", path)
    meta: dict[str, Any] = read_json(sidecar)
    if meta.get("format") != fmt:
        raise HarmonizationError(f"sidecar is not a symprep {what} file", sidecar)
    if meta.get("format_version") != version:
        raise HarmonizationError(
            f"{what} format version {meta.get('format_version')} is not supported "
            f"(this symprep reads version {version})",
            path,
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("arrays_sha256"):
        raise HarmonizationError("arrays do not match the SHA-256 in the sidecar", path)
    return meta, data


def save_model(model: ComBat, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` (NPZ, ``.npz`` appended if missing) and its sidecar."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model, "gamma_star_")
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "symprep_version": pipeline.__version__,
        "params": {k: getattr(model, k) for k in _PARAMS},
        "sites": list(model.sites_),
        "added_sites": list(getattr(model, "added_sites_", [])),
        "site_counts": [[s, c] for s, c in model.site_counts_.items()],
        "ref_level": model.ref_level_,
        "priors": model.priors_,
        "covariate_encoding": model.encoding_.to_json(),
        "n_features": int(model.n_features_in_),
        "feature_mask_hash": model.feature_mask_hash_,
    }
    arrays = {k.rstrip("_"): getattr(model, k) for k in _ARRAYS}
    return write_checked(path, arrays, sidecar)


def load_model(path: str | os.PathLike[str], cls: type[ComBat]) -> ComBat:
    """Read a model written by :func:`save_model` into a new ``cls`` (:class:`ComBat`),
    checking its version and integrity. ``ComBat.load(path)`` is the usual way in."""
    meta, data = read_checked(path, FORMAT, FORMAT_VERSION, "ComBat model")
    model = cls(**meta["params"])
    with np.load(io.BytesIO(data)) as arrays:
        for key in _ARRAYS:
            setattr(model, key, arrays[key.rstrip("_")])
    model.sites_ = list(meta["sites"])
    if meta["added_sites"]:
        model.added_sites_ = list(meta["added_sites"])
    model.site_counts_ = {s: c for s, c in meta["site_counts"]}
    model.ref_level_ = meta["ref_level"]
    model.priors_ = meta["priors"]
    model.encoding_ = CovariateEncoding.from_json(meta["covariate_encoding"])
    model.n_features_in_ = int(meta["n_features"])
    model.feature_mask_hash_ = meta["feature_mask_hash"]
    if _hash_mask(~model.constant_features_) != model.feature_mask_hash_:
        raise HarmonizationError("feature mask does not match its hash in the sidecar", path)
    return model
