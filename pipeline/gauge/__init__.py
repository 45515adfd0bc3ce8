"""Gauge stage: per-image intensity normalization and ComBat harmonization across sites."""

from pipeline.gauge._combat import ComBat
from pipeline.gauge._errors import CovariateError, HarmonizationError, UnseenSiteError
from pipeline.gauge._persist import load_model, save_model

__all__ = [
    "ComBat",
    "CovariateError",
    "HarmonizationError",
    "UnseenSiteError",
    "load_model",
    "save_model",
]
