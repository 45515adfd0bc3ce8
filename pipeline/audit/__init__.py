"""The invariance audit: how much each output of the participant stage moves when the raw inputs
are transformed by random elements of the nuisance group (head pose, intensity gauge, header
orientation, BOLD time shift).

- :mod:`._transforms`: random group elements and their action on raw T1w/BOLD images.
- :mod:`._measures`: residual measures (rank correlation, Dice, map differences, time series, FC).
- :mod:`._compare`: pairing of derivatives and their residual table.
- :mod:`._run`: :func:`run_audit` for one subject, its figure, :func:`summarize_audits` for the group.
- :mod:`.options`: the ``audit:`` section of the configuration.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule (imported on first use: ``pipeline.audit.options`` is read by the
#: configuration schema, which must not pull in torch through the transforms)
_EXPORTS = {
    "compare_derivatives": "_compare",
    "connectivity_rmsd": "_measures",
    "dice": "_measures",
    "probability_mad": "_measures",
    "rank_correlation": "_measures",
    "timeseries_correlation": "_measures",
    "zscore_rmsd": "_measures",
    "plot_residuals": "_run",
    "residuals_path": "_run",
    "run_audit": "_run",
    "summarize_audits": "_run",
    "AuditTransform": "_transforms",
    "draw_transforms": "_transforms",
    "transform_bold": "_transforms",
    "transform_t1w": "_transforms",
    "write_transformed_dataset": "_transforms",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "AuditTransform",
    "compare_derivatives",
    "connectivity_rmsd",
    "dice",
    "draw_transforms",
    "plot_residuals",
    "probability_mad",
    "rank_correlation",
    "residuals_path",
    "run_audit",
    "summarize_audits",
    "timeseries_correlation",
    "transform_bold",
    "transform_t1w",
    "write_transformed_dataset",
    "zscore_rmsd",
]
