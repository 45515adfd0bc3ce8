"""The invariance audit: how much each output of the participant stage moves when the raw inputs
are transformed by random elements of the nuisance group (head pose, intensity gauge, header
orientation, BOLD time shift).

- :mod:`._transforms`: random group elements and their action on raw T1w/BOLD images.
- :mod:`._measures`: residual measures (rank correlation, Dice, map differences, time series, FC).
- :mod:`._compare`: pairing of derivatives and their residual table.
- :mod:`._run`: :func:`run_audit` for one subject, its figure, :func:`summarize_audits` for the group.
"""

from pipeline.audit._compare import compare_derivatives
from pipeline.audit._measures import (
    connectivity_rmsd,
    dice,
    probability_mad,
    rank_correlation,
    timeseries_correlation,
    zscore_rmsd,
)
from pipeline.audit._run import plot_residuals, residuals_path, run_audit, summarize_audits
from pipeline.audit._transforms import (
    AuditTransform,
    draw_transforms,
    transform_bold,
    transform_t1w,
    write_transformed_dataset,
)

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
