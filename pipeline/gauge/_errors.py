"""Errors raised by the gauge stage (all one-line :class:`~pipeline.errors.SymprepError`)."""

from __future__ import annotations

from pipeline.errors import InputError


class HarmonizationError(InputError):
    """Bad input to ComBat: NaN features, a single-subject site, mismatched lengths."""


class CovariateError(HarmonizationError):
    """A covariate has an unsupported dtype, missing values, an unseen level or is collinear."""


class UnseenSiteError(HarmonizationError):
    """A site was not part of the fit, or an unseen site has too few subjects to be estimated."""
