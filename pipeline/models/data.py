"""Training data: participants table, site-aware splits, and a dataset of NIfTI volumes.

Labels come from a BIDS ``participants.tsv`` (``participant_id``, ``site`` and the target column,
e.g. ``diagnosis`` or ``age``); volumes are derivatives found by a name pattern, e.g.
``sub-{label}/anat/sub-{label}_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F  # noqa: N812
from torch.utils.data import Dataset

from pipeline.errors import ConfigError, InputError
from pipeline.models._layers import centred_size
from pipeline.models.options import DEFAULT_PATTERN

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PATTERN",
    "VolumeDataset",
    "encode_labels",
    "find_volumes",
    "read_participants",
    "site_split",
]


def read_participants(
    path: str | os.PathLike[str], target: str = "diagnosis", site_column: str = "site"
) -> pd.DataFrame:
    """Read ``participants.tsv``; check the id, site and target columns; drop rows without a target.

    Returns a table indexed by the label without ``sub-`` with columns ``site`` and ``target``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "participants.tsv"
    if not path.exists():
        raise InputError("participants table not found", path)
    table = pd.read_csv(path, sep="\t", dtype={"participant_id": str})
    for col in ("participant_id", site_column, target):
        if col not in table.columns:
            raise InputError(
                f"column {col!r} missing (columns: {', '.join(map(str, table.columns))})", path
            )
    labels = table["participant_id"].str.removeprefix("sub-")
    out = pd.DataFrame(
        {"site": table[site_column].astype(str).to_numpy(), "target": table[target].to_numpy()},
        index=pd.Index(labels, name="label"),
    )
    missing = out["target"].isna()
    if missing.any():
        logger.warning("dropping %d participants without %r", int(missing.sum()), target)
    return out[~missing]


def encode_labels(values: Sequence, task: str = "auto") -> tuple[np.ndarray, str, list]:
    """Encode targets: classes → integer codes (sorted class names), numbers → float32.

    ``task="auto"`` picks classification for non-numeric targets or at most 10 distinct integers.
    Returns ``(encoded, task, classes)``.
    """
    values = pd.Series(list(values))
    if task == "auto":
        numeric = pd.api.types.is_numeric_dtype(values)
        few_ints = numeric and values.nunique() <= 10 and np.allclose(values, np.round(values))
        task = "classification" if (not numeric or few_ints) else "regression"
    if task == "classification":
        classes = sorted(values.unique().tolist(), key=str)
        codes = values.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
        return codes, task, classes
    if task == "regression":
        return values.to_numpy(np.float32), task, []
    raise ConfigError(f"task must be 'auto', 'classification' or 'regression'; got {task!r}")


def site_split(
    table: pd.DataFrame,
    strategy: str = "stratified",
    test_fraction: float = 0.25,
    test_sites: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split participants into train and test positions, aware of sites.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`read_participants` (columns ``site``, ``target``).
    strategy : {"stratified", "leave-site-out"}, default="stratified"
        ``stratified``: every (site, target class) cell contributes ``test_fraction`` of its
        members to the test set (for a numeric target: stratified by site only).
        ``leave-site-out``: all participants of ``test_sites`` (default: the last site in sorted
        order) form the test set.
    test_fraction : float, default=0.25
        Fraction per stratum for ``stratified``.
    test_sites : sequence of str, optional
        Held-out sites for ``leave-site-out``.
    seed : int, default=0
        Seed of the random assignment.

    Returns
    -------
    train, test : numpy.ndarray
        Integer positions into ``table``, sorted.
    """
    sites = table["site"].astype(str).to_numpy()
    if strategy == "leave-site-out":
        held = list(test_sites) if test_sites else [sorted(set(sites))[-1]]
        unknown = sorted(set(held) - set(sites))
        if unknown:
            raise ConfigError(f"test_sites {unknown} not among the sites {sorted(set(sites))}")
        test = np.isin(sites, held)
        if test.all():
            raise ConfigError("leave-site-out would leave no training participants")
    elif strategy == "stratified":
        if not 0 < test_fraction < 1:
            raise ConfigError(f"test_fraction must be in (0, 1); got {test_fraction}")
        rng = np.random.default_rng(seed)
        target = table["target"]
        numeric = pd.api.types.is_float_dtype(target) and target.nunique() > 10
        strata = sites if numeric else np.char.add(sites.astype(str), "|" + target.astype(str))
        test = np.zeros(len(table), dtype=bool)
        for s in np.unique(strata):
            members = rng.permutation(np.flatnonzero(strata == s))
            n_test = int(round(test_fraction * len(members)))
            test[members[: min(n_test, len(members) - 1) if len(members) > 1 else 0]] = True
    else:
        raise ConfigError(f"split must be 'stratified' or 'leave-site-out'; got {strategy!r}")
    return np.flatnonzero(~test), np.flatnonzero(test)


def find_volumes(
    derivatives: str | os.PathLike[str], labels: Sequence[str], pattern: str = DEFAULT_PATTERN
) -> list[Path]:
    """Paths of every participant's volume; a one-line :class:`InputError` names the missing
    ones."""
    root = Path(derivatives)
    paths = [root / pattern.format(label=label) for label in labels]
    missing = [p for p in paths if not p.exists()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise InputError(f"{len(missing)} input volume(s) missing, e.g. {missing[0]}{more}", root)
    return paths


def prepare_volume(
    data: np.ndarray, levels: int, downsample: int = 1, cube: bool = True
) -> torch.Tensor:
    """Normalise and reshape one volume for the models: ``(1, N, N, N)`` float32.

    Steps: optional average-pooling by ``downsample``; z-scoring over non-zero voxels; symmetric
    zero-padding to a cube (``cube=True``) of side :func:`~pipeline.models.centred_size` so that
    every stride lattice stays centred.
    """
    x = torch.as_tensor(np.asarray(data, dtype=np.float32))[None, None]
    if downsample > 1:
        x = F.avg_pool3d(x, downsample, ceil_mode=True)
    fg = x != 0
    if fg.any():
        mu, sd = x[fg].mean(), x[fg].std().clamp(min=1e-6)
        x = torch.where(fg, (x - mu) / sd, torch.zeros_like(x))
    shape = x.shape[-3:]
    sides = [max(shape)] * 3 if cube else list(shape)
    target = [centred_size(s, levels) for s in sides]
    pads: list[int] = []
    for n, t in zip(reversed(shape), reversed(target), strict=True):
        pads += [(t - n) // 2, t - n - (t - n) // 2]
    return F.pad(x, pads)[0]


class VolumeDataset(Dataset):
    """NIfTI volumes (loaded once, checked at the boundary) with their encoded labels.

    Parameters
    ----------
    paths : sequence of path-like
        One 3-D image per participant.
    targets : array-like
        Encoded labels (int64 classes or float32 values).
    levels : int
        Stride-2 stages of the model (sets the padded size, see :func:`prepare_volume`).
    downsample : int, default=1
        Average-pooling factor applied on load.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        targets: np.ndarray,
        levels: int,
        downsample: int = 1,
    ) -> None:
        from pipeline.io import check_image

        if len(paths) != len(targets):
            raise ValueError(f"got {len(paths)} volumes but {len(targets)} targets")
        self.paths = [Path(p) for p in paths]
        self.targets = torch.as_tensor(np.asarray(targets))
        vols = [
            prepare_volume(check_image(p).get_fdata(dtype=np.float32), levels, downsample)
            for p in self.paths
        ]
        shapes = {tuple(v.shape) for v in vols}
        if len(shapes) > 1:
            raise InputError(f"input volumes differ in shape after padding: {sorted(shapes)}")
        self.volumes = torch.stack(vols) if vols else torch.zeros(0)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.volumes[i], self.targets[i]
