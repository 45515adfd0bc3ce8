"""Gauge stage: per-image intensity normalization and ComBat harmonization across sites."""

from pipeline.gauge._combat import ComBat
from pipeline.gauge._errors import CovariateError, HarmonizationError, UnseenSiteError
from pipeline.gauge._intensity import (
    NyulStandardizer,
    fcm_normalize,
    normalize_t1w,
    whitestripe_normalize,
    zscore_normalize,
)
from pipeline.gauge._persist import load_model, save_model

__all__ = [
    "ComBat",
    "CovariateError",
    "HarmonizationError",
    "UnseenSiteError",
    "NyulStandardizer",
    "fcm_normalize",
    "load_model",
    "normalize_t1w",
    "save_model",
    "whitestripe_normalize",
    "zscore_normalize",
]
