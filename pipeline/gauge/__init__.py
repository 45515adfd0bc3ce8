"""Gauge stage: per-image intensity normalization and ComBat harmonization across sites."""

from pipeline.gauge._combat import ComBat
from pipeline.gauge._distributed import (
    SiteStatistics,
    add_site_statistics,
    fit_site_statistics,
    site_statistics,
)
from pipeline.gauge._errors import CovariateError, HarmonizationError, UnseenSiteError
from pipeline.gauge._intensity import (
    NyulStandardizer,
    fcm_normalize,
    normalize_t1w,
    whitestripe_normalize,
    zscore_normalize,
)
from pipeline.gauge._mapreduce import add_sites_mapreduce, fit_mapreduce, transform_mapreduce
from pipeline.gauge._persist import save_model
from pipeline.gauge._qc import biology_kept, effect_maps, site_prediction
from pipeline.gauge._registry import build_harmonizer, register_harmonizer
from pipeline.gauge._run import missing_site_column, run_harmonization
from pipeline.gauge._voxelwise import run_voxelwise_harmonization, t1w_normalizer
from pipeline.gauge.options import GaugeOptions


def load_model(path) -> ComBat:
    """Read a :class:`ComBat` model written by :func:`save_model` (same as ``ComBat.load``)."""
    return ComBat.load(path)


__all__ = [
    "ComBat",
    "CovariateError",
    "GaugeOptions",
    "HarmonizationError",
    "SiteStatistics",
    "UnseenSiteError",
    "NyulStandardizer",
    "add_site_statistics",
    "add_sites_mapreduce",
    "biology_kept",
    "build_harmonizer",
    "register_harmonizer",
    "effect_maps",
    "fcm_normalize",
    "fit_mapreduce",
    "fit_site_statistics",
    "load_model",
    "missing_site_column",
    "normalize_t1w",
    "run_harmonization",
    "run_voxelwise_harmonization",
    "save_model",
    "site_prediction",
    "site_statistics",
    "t1w_normalizer",
    "transform_mapreduce",
    "whitestripe_normalize",
    "zscore_normalize",
]
