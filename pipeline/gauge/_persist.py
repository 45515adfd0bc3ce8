"""Save and load fitted :class:`~pipeline.gauge.ComBat` models: NPZ arrays + a JSON sidecar.

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

#: version of the on-disk layout; bump when arrays or sidecar keys change meaning
FORMAT_VERSION = 1
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


def save_model(model: ComBat, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` (NPZ, ``.npz`` appended if missing) and its sidecar."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(model, "gamma_star_")
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    buf = io.BytesIO()
    np.savez(buf, **{k.rstrip("_"): getattr(model, k) for k in _ARRAYS})
    data = buf.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    sidecar = {
        "format": "symprep-combat",
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
        "arrays_sha256": hashlib.sha256(data).hexdigest(),
    }
    write_json(sidecar_path(path), sidecar)
    return path


def load_model(path: str | os.PathLike[str], cls: type[ComBat]) -> ComBat:
    """Read a model written by :func:`save_model` into a new ``cls`` (:class:`ComBat`),
    checking its version and integrity. ``ComBat.load(path)`` is the usual way in."""
    path = Path(path)
    if not path.exists():
        raise HarmonizationError("ComBat model file does not exist", path)
    meta: dict[str, Any] = read_json(sidecar_path(path))
    if meta.get("format") != "symprep-combat":
        raise HarmonizationError("sidecar is not a symprep ComBat model", sidecar_path(path))
    if meta.get("format_version") != FORMAT_VERSION:
        raise HarmonizationError(
            f"model format version {meta.get('format_version')} is not supported "
            f"(this symprep reads version {FORMAT_VERSION})",
            path,
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta["arrays_sha256"]:
        raise HarmonizationError("arrays do not match the SHA-256 in the sidecar", path)
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
