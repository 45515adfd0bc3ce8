"""Pair a subject's derivatives from a transformed run with the untransformed ones and measure
the residuals (template-space outputs only: those are the ones meant to be invariant)."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.audit._measures import (
    connectivity_rmsd,
    dice,
    probability_mad,
    rank_correlation,
    timeseries_correlation,
    zscore_rmsd,
)
from pipeline.outputs import ANAT_OUTPUTS, FUNC_OUTPUTS, ROI_OUTPUTS, find_outputs

__all__ = ["compare_derivatives", "output_label"]

logger = logging.getLogger(__name__)

#: a row of this measure says an output could not be compared at all (residual 1)
NOT_COMPARABLE = "comparable"


def output_label(name: str, subject: str) -> str:
    """Short label of a derivative file: its name without ``sub-X_`` and extension."""
    label = name.removeprefix(f"sub-{subject}_")
    for ext in (".nii.gz", ".tsv", ".nii"):
        label = label.removesuffix(ext)
    return label


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


def _table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def _anat_rows(ref: Path, other: Path, subject: str, time_shift: int = 0) -> list[dict]:
    rows: list[dict] = []
    files = sorted(
        p
        for spec in ANAT_OUTPUTS.values()
        if spec.std and spec.extension == ".nii.gz"
        for p in find_outputs(spec, ref, subject)
    )
    masks = find_outputs(ANAT_OUTPUTS["std_mask"], ref, subject)
    ref_mask = _load(masks[0]) if masks else None
    union = ref_mask
    if masks and (other / masks[0].relative_to(ref)).is_file():
        union = np.maximum(ref_mask, _load(other / masks[0].relative_to(ref)))
    for f in files:
        g = other / f.relative_to(ref)
        if not g.is_file():
            continue
        a, b = _load(f), _load(g)
        label = output_label(f.name, subject)
        if f.name.endswith("_mask.nii.gz"):
            d = dice(a, b)
            rows.append({"output": label, "measure": "dice", "value": d, "residual": 1 - d})
        elif f.name.endswith("_probseg.nii.gz"):
            v = probability_mad(a, b, union)
            rows.append({"output": label, "measure": "mean_abs_diff", "value": v, "residual": v})
        else:
            r = rank_correlation(a, b, ref_mask)
            rows.append({"output": label, "measure": "rank_corr", "value": r, "residual": 1 - r})
            z = zscore_rmsd(a, b, ref_mask)
            rows.append({"output": label, "measure": "zscore_rmsd", "value": z, "residual": z})
    return rows


def _func_rows(ref: Path, other: Path, subject: str, time_shift: int) -> list[dict]:
    rows: list[dict] = []
    tables = [FUNC_OUTPUTS["confounds"], ROI_OUTPUTS["timeseries"], ROI_OUTPUTS["relmat"]]
    for f in sorted(p for spec in tables for p in find_outputs(spec, ref, subject)):
        g = other / f.relative_to(ref)
        if not g.is_file():
            continue
        label = output_label(f.name, subject)
        name = f.name
        try:
            if name.endswith("_relmat.tsv") or "connectivity" in name:
                a, b = _table(f), _table(g)
                a = a.select_dtypes("number").to_numpy()
                b = b.select_dtypes("number").to_numpy()
                v = connectivity_rmsd(a, b)
                rows.append({"output": label, "measure": "fc_rmsd", "value": v, "residual": v})
            elif name.endswith("_timeseries.tsv") and "desc-carpet" not in name:
                ta, tb = _table(f).select_dtypes("number"), _table(g).select_dtypes("number")
                if "desc-confounds" in name:
                    # the columns both runs have: CompCor keeps as many components as reach 50%
                    # of the variance, and spike regressors follow each run's outliers
                    common = [c for c in ta.columns if c in tb.columns]
                    ta, tb = ta[common], tb[common]
                a, b = ta.to_numpy(), tb.to_numpy()
                r = timeseries_correlation(a, b, time_shift)
                measure = "confounds_corr" if "desc-confounds" in name else "timeseries_corr"
                rows.append({"output": label, "measure": measure, "value": r, "residual": 1 - r})
        except ValueError as exc:  # shapes differ: a transformed run lost or gained volumes
            logger.warning("audit: cannot compare %s: %s", name, exc)
            rows.append({"output": label, "measure": NOT_COMPARABLE, "value": 0.0, "residual": 1.0})
    return rows


#: how each stage's outputs are compared, by stage name; the measures each gives are the ones its
#: entry in the stage registry (:data:`pipeline.workflows.stages.STAGES`) declares
STAGE_COMPARISONS = {"anat": _anat_rows, "func": _func_rows}


def stage_comparisons() -> list[tuple[str, tuple[str, ...]]]:
    """``(stage, audit measures)`` of every registered stage that declares audit measures.

    Raises
    ------
    ValueError
        A stage declares measures but :data:`STAGE_COMPARISONS` has no comparison for it.
    """
    from pipeline.workflows.stages import STAGES

    out = []
    for stage in STAGES.values():
        if not stage.audit_measures:
            continue
        if stage.name not in STAGE_COMPARISONS:
            raise ValueError(
                f"stage {stage.name!r} declares audit measures {stage.audit_measures} but "
                "pipeline.audit._compare.STAGE_COMPARISONS has no comparison for it"
            )
        out.append((stage.name, stage.audit_measures))
    return out


def compare_derivatives(
    reference_dir: Path, other_dir: Path, subject: str, time_shift: int = 0
) -> pd.DataFrame:
    """Residuals of the outputs of ``subject`` in ``other_dir`` relative to ``reference_dir``:
    every registered stage's comparison (template-space anatomical outputs, functional tables).

    Returns
    -------
    pandas.DataFrame
        Columns ``stage``, ``output``, ``measure`` (one of the stage's declared audit measures),
        ``value`` (the raw measure) and ``residual`` (0 for an exactly invariant output; larger is
        worse).

    Raises
    ------
    ValueError
        A comparison gave a measure that its stage does not declare.
    """
    rows = []
    for stage, measures in stage_comparisons():
        found = STAGE_COMPARISONS[stage](Path(reference_dir), Path(other_dir), subject, time_shift)
        undeclared = {r["measure"] for r in found} - set(measures) - {NOT_COMPARABLE}
        if undeclared:
            raise ValueError(
                f"audit of stage {stage!r}: measures {sorted(undeclared)} are not among its "
                f"declared audit measures {measures}"
            )
        rows += [{"stage": stage, **r} for r in found]
    return pd.DataFrame(rows, columns=["stage", "output", "measure", "value", "residual"])
