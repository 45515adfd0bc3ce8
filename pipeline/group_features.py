"""Group-level feature tables and map lists that the harmonization stage reads from the derivatives.

* :func:`gm_features` — regional grey matter (template-space GM probability in cubes);
* :func:`gm_maps`, :func:`t1w_maps` — template-space GM maps and T1w (voxel-wise harmonization);
* :func:`fc_features` — functional-connectivity edges (Fisher z of Pearson correlations).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.outputs import (
    ANAT_OUTPUTS,
    ROI_OUTPUTS,
    TEMPLATE,
    find_output,
    find_outputs,
    res_label,
    space_of,
)

logger = logging.getLogger(__name__)


def _maps(output_dir: Path, subjects: list[str], key: str, resolution: int) -> dict[str, Path]:
    maps = {}
    for sub in subjects:
        path = find_output(ANAT_OUTPUTS[key], output_dir, sub, res=res_label(resolution))
        if path is not None:
            maps[sub] = path
    maps_space(maps)  # one template for all
    return maps


def maps_space(maps: dict[str, Path]) -> str:
    """The template the participant stage registered ``maps`` to (their ``space`` entity).

    The participant outputs, not the group run's configuration, say which template they are in;
    the shipped template when there are none.

    Raises
    ------
    pipeline.errors.SymprepError
        The maps are in more than one template.
    """
    from pipeline.errors import SymprepError

    spaces = sorted({space_of(p) for p in maps.values()})
    if len(spaces) > 1:
        raise SymprepError(
            f"the participant outputs are in several templates ({', '.join(spaces)}); "
            "rerun the participant stage with one --output-spaces for every subject"
        )
    return spaces[0] if spaces else TEMPLATE


def maps_template(maps: dict[str, Path], resolution: int):
    """The :class:`pipeline.data.templates.Template` that ``maps`` are on (see :func:`maps_space`)."""
    from pipeline.data.templates import load_template

    return load_template(resolution, maps_space(maps))


def gm_maps(output_dir: Path, subjects: list[str], resolution: int) -> dict[str, Path]:
    """Participant → template-space GM probability map, for the subjects that have one."""
    return _maps(output_dir, subjects, "std_gm_probseg", resolution)


def t1w_maps(output_dir: Path, subjects: list[str], resolution: int) -> dict[str, Path]:
    """Participant → template-space preprocessed T1w, for the subjects that have one."""
    return _maps(output_dir, subjects, "std_t1w", resolution)


def gm_features(
    output_dir: Path, subjects: list[str], resolution: int, block_mm: float = 8.0
) -> pd.DataFrame:
    """Regional grey matter: template-space GM probability averaged in ``block_mm`` cubes.

    One row per subject with GM maps, one column per cube that lies at least half inside the
    template brain mask (a few thousand regional features: voxel-wise matrices belong to the
    streaming :class:`pipeline.gauge.ComBat` API, not to TSV tables).
    """
    import nibabel as nib

    maps = gm_maps(output_dir, subjects, resolution)
    factor = max(1, int(round(block_mm / resolution)))
    mask = maps_template(maps, resolution).mask.get_fdata() > 0

    def blocks(volume: np.ndarray) -> np.ndarray:
        shape = [n - n % factor for n in volume.shape[:3]]
        v = volume[: shape[0], : shape[1], : shape[2]]
        v = v.reshape(
            shape[0] // factor, factor, shape[1] // factor, factor, shape[2] // factor, factor
        )
        return v.mean(axis=(1, 3, 5))

    inside = blocks(mask.astype(np.float32)) >= 0.5
    names = [f"gm_block_{i}_{j}_{k}" for i, j, k in zip(*np.nonzero(inside), strict=True)]
    rows = {
        sub: blocks(np.asarray(nib.load(path).dataobj, dtype=np.float32))[inside]
        for sub, path in maps.items()
    }
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame.from_dict(rows, orient="index", columns=names)


def fc_features(
    output_dir: Path, subjects: list[str], atlas: str, strategy: str, task: str | None = None
) -> pd.DataFrame:
    """Functional-connectivity edges: Fisher z of each subject's Pearson matrix, upper triangle.

    Reads every run's ``…_atlas-A_meas-PearsonCorrelation_desc-S_relmat.tsv`` of the task (all
    sessions and runs) and averages their Fisher z, the usual way to pool runs of one subject.
    Columns are ``ROI1__ROI2``; subjects without a matrix are left out (logged). Correlations are
    clipped to ±0.999999 before ``arctanh``.
    """
    desc = strategy.replace("_", "")
    filters = {"atlas": atlas, "meas": "PearsonCorrelation", "desc": desc}
    if task is not None:
        filters["task"] = task
    rows, names = {}, None
    for sub in subjects:
        found = find_outputs(ROI_OUTPUTS["relmat"], output_dir, sub, **filters)
        if not found:
            logger.info(
                "sub-%s: no %s FC matrix (%s); left out of the FC harmonization", sub, atlas, desc
            )
            continue
        per_run = []
        for path in found:
            matrix = pd.read_csv(path, sep="\t", index_col=0)
            iu = np.triu_indices(len(matrix), k=1)
            z = np.arctanh(np.clip(matrix.to_numpy(dtype=np.float64)[iu], -0.999999, 0.999999))
            edges = [f"{matrix.index[i]}__{matrix.columns[j]}" for i, j in zip(*iu, strict=True)]
            if names is None:
                names = edges
            if edges != names:
                logger.warning(
                    "sub-%s: %s has other ROIs than the first subject; left out", sub, path.name
                )
                continue
            per_run.append(z)
        if not per_run:
            continue
        values = np.mean(per_run, axis=0)
        rows[sub] = values
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame.from_dict(rows, orient="index", columns=names)
