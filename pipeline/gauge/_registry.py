"""The harmonizer seam: ``gauge.method`` names a registered builder of an unfitted harmonizer.

A harmonizer is scikit-learn shaped, as :class:`~pipeline.gauge.ComBat` is:
``fit(X, site, covariates)``, ``transform(X, site, covariates, out=None)``, ``save(path)``, and a
``sites_`` attribute after fitting. The group stage, its QC and persistence use only that
interface, so a second method (ComBat-GAM with a smooth age term, as neuroHarmonize offers) is one
:func:`register_harmonizer` call (see CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.errors import ConfigError
from pipeline.gauge.options import GaugeOptions

#: method name -> builder of an unfitted harmonizer from the ``gauge:`` options
HARMONIZERS: dict[str, Callable[[GaugeOptions], Any]] = {}


def register_harmonizer(name: str, builder: Callable[[GaugeOptions], Any]) -> None:
    """Make ``gauge.method: NAME`` build harmonizers with ``builder(options)``."""
    if name in HARMONIZERS:
        raise ValueError(f"harmonizer {name!r} is already registered")
    HARMONIZERS[name] = builder


def build_harmonizer(options: GaugeOptions) -> Any:
    """An unfitted harmonizer of ``options.method`` with the ``gauge:`` section's settings.

    >>> build_harmonizer(GaugeOptions()).__class__.__name__
    'ComBat'
    """
    if options.method not in HARMONIZERS:
        known = ", ".join(sorted(HARMONIZERS))
        raise ConfigError(f"gauge.method must be one of {known}; got {options.method!r}")
    return HARMONIZERS[options.method](options)


def _combat(options: GaugeOptions):
    from pipeline.gauge._combat import ComBat

    return ComBat(
        parametric=options.parametric,
        eb=options.eb,
        mean_only=options.mean_only,
        ref_batch=options.ref_site,
        block_features=options.block_features,
        min_new_site_subjects=options.min_new_site_subjects,
    )


register_harmonizer("combat", _combat)
