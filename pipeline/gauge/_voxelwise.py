"""Voxel-wise ComBat of template-space maps (GM probability, normalized T1w) on a dask cluster.

The maps of every subject form an ``(n_subjects, n_voxels_in_mask)`` matrix that need not fit in
memory (ABIDE at 2 mm: 1,100 × 228,000). The stage runs in four steps:

1. **load** (parallel, on the dask cluster of :mod:`pipeline.dask_cluster`): each subject's map is
   read, intensity-normalized (T1w: ``gauge.intensity_method``) and masked by one task; the client streams the rows into a float32 memory-mapped matrix
   in the work folder, in subject order;
2. **fit** :class:`~pipeline.gauge.ComBat` on the training subjects and **transform** everyone
   into a second memmap as a map-reduce over blocks of subjects × voxels on the same cluster
   (:mod:`pipeline.gauge._mapreduce`): the workers read the blocks from the memmap and write the
   harmonized blocks themselves, so each process holds a few blocks whatever the cohort size;
3. **write** one harmonized NIfTI per subject (parallel tasks, atomic writes);
4. **QC** on a seeded sample of voxels (``gauge.qc_max_features``): site prediction before and
   after with the harmonizer fitted inside each fold, biological t-maps kept, the same tables and
   figures as :func:`~pipeline.gauge.run_harmonization`.

The memmaps are deleted at the end; they hold nothing the outputs don't.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.gauge._combat import ComBat
from pipeline.gauge._errors import HarmonizationError
from pipeline.gauge._stream import _release
from pipeline.gauge.options import GaugeOptions

log = logging.getLogger(__name__)


@dataclass
class IntensityNormalizer:
    """Per-image intensity normalization applied to each map before it is masked (picklable, so
    it runs on the dask workers). ``method`` is one of :data:`pipeline.gauge._intensity.METHODS`;
    ``nyul`` a :class:`~pipeline.gauge.NyulStandardizer` fitted on the training subjects."""

    method: str
    mask: np.ndarray
    nyul: Any = None

    def __call__(self, volume: np.ndarray) -> np.ndarray:
        from pipeline.gauge._intensity import normalize_t1w

        out = normalize_t1w(volume, self.mask, self.method, nyul=self.nyul)
        return np.asarray(out, dtype=np.float32)


def _masked_row(
    path: str,
    flat_index: np.ndarray,
    shape: tuple[int, ...],
    normalize: IntensityNormalizer | None = None,
) -> np.ndarray:
    img = nib.load(path)
    if img.shape[:3] != shape:
        raise HarmonizationError(f"{path}: grid {img.shape[:3]} differs from the mask's {shape}")
    data = np.asarray(img.dataobj, dtype=np.float32)
    bad = int(np.count_nonzero(~np.isfinite(data.reshape(-1)[flat_index])))
    if bad:
        raise HarmonizationError(f"{path}: {bad} NaN or Inf voxel(s) inside the brain mask")
    if normalize is not None:
        data = normalize(data)
    return data.reshape(-1)[flat_index]


class NiftiSource:
    """A block source (:mod:`pipeline.gauge._mapreduce`) whose rows are subjects' NIfTI maps
    restricted to the in-mask voxels ``flat_index``: map-reduce ComBat reads the maps directly.

    A map is decompressed whole, so its blocks span every feature (``whole_rows``).
    """

    whole_rows = True

    def __init__(
        self, paths: Sequence[str | Path], flat_index: np.ndarray, grid: tuple[int, ...]
    ) -> None:
        self.paths = [str(p) for p in paths]
        self.flat_index = np.asarray(flat_index)
        self.grid = tuple(int(g) for g in grid)
        self.shape = (len(self.paths), int(self.flat_index.size))

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Subjects ``r0:r1``, voxels ``c0:c1`` as float64."""
        out = np.empty((r1 - r0, c1 - c0))
        for k, path in enumerate(self.paths[r0:r1]):
            out[k] = _masked_row(path, self.flat_index, self.grid)[c0:c1]
        return out


def _row_or_error(
    path: str,
    flat_index: np.ndarray,
    shape: tuple[int, ...],
    normalize: IntensityNormalizer | None = None,
) -> np.ndarray | str:
    """:func:`_masked_row`, or the one-line reason the map cannot be used."""
    try:
        return _masked_row(path, flat_index, shape, normalize)
    except HarmonizationError as exc:
        return str(exc)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        return f"{path}: cannot read ({type(exc).__name__}: {exc})".splitlines()[0]


def _keep_rows(raw: np.ndarray, path: Path, keep: list[int]) -> np.ndarray:
    """Rewrite the memmap at ``path`` with only the rows ``keep`` (streamed, a few rows at once)."""
    tmp = path.with_name(path.stem + "_kept.npy")
    kept = np.lib.format.open_memmap(
        tmp, mode="w+", dtype=raw.dtype, shape=(len(keep), raw.shape[1])
    )
    for start in range(0, len(keep), 32):
        rows = keep[start : start + 32]
        kept[start : start + len(rows)] = raw[rows]
        kept.flush()
        _release(kept)
        _release(raw)
    del raw, kept
    tmp.replace(path)
    return np.load(path, mmap_mode="r+")


def _write_map(
    matrix_path: str,
    row: int,
    flat_index: np.ndarray,
    affine: np.ndarray,
    shape: tuple[int, ...],
    dest: str,
) -> str:
    from pipeline.io import save_image

    matrix = np.load(matrix_path, mmap_mode="r")
    volume = np.zeros(int(np.prod(shape)), dtype=np.float32)
    volume[flat_index] = matrix[row]
    img = nib.Nifti1Image(volume.reshape(shape), affine)
    img.header.set_xyzt_units("mm")
    save_image(img, dest)
    return dest


def _columns(matrix: np.ndarray, cols: np.ndarray, rows_per_read: int = 32) -> np.ndarray:
    """``matrix[:, cols]`` as float64, read a few rows at a time from a memmap (whose pages are
    released after each read, so sampled columns do not map the whole file in)."""
    out = np.empty((matrix.shape[0], cols.size), dtype=np.float64)
    for start in range(0, matrix.shape[0], rows_per_read):
        stop = min(start + rows_per_read, matrix.shape[0])
        out[start:stop] = matrix[start:stop][:, cols]
        _release(matrix)
    return out


def _gather(client: Any, tasks: list[Any], desc: str) -> Any:
    """Run delayed ``tasks`` on the client (or the threaded scheduler), yield (index, result)."""
    from tqdm.auto import tqdm

    if client is None:
        import dask

        results = dask.compute(*tasks)
        yield from enumerate(results)
        return
    from distributed import as_completed

    futures = client.compute(tasks)
    order = {f.key: i for i, f in enumerate(futures)}
    for future in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="subject"):
        yield order[future.key], future.result()
        future.release()


def _combat_mapreduce(
    model: ComBat,
    raw: np.memmap,
    train: np.ndarray,
    site: np.ndarray,
    cov: pd.DataFrame | None,
    harmonized: np.memmap,
    client: Any,
) -> ComBat:
    """Fit on the training rows, add unseen sites, apply to everyone: map-reduce over blocks on
    the dask cluster, the workers reading ``raw`` and writing ``harmonized`` by file name."""
    from pipeline.gauge._mapreduce import (
        MemmapSource,
        add_sites_mapreduce,
        fit_mapreduce,
        transform_mapreduce,
    )

    def rows(mask: np.ndarray) -> pd.DataFrame | None:
        return None if cov is None else cov[mask].reset_index(drop=True)

    source = MemmapSource(raw)
    fitted = fit_mapreduce(
        model, source.take(np.flatnonzero(train)), site[train], rows(train), client=client
    )
    unseen = ~np.isin(site, np.asarray(fitted.sites_, dtype=object))
    if unseen.any():
        add_sites_mapreduce(
            fitted, source.take(np.flatnonzero(unseen)), site[unseen], rows(unseen), client=client
        )
    transform_mapreduce(fitted, source, site, cov, out=harmonized, client=client)
    return fitted


def _fit_apply_in_process(
    model: Any,
    raw: np.memmap,
    train: np.ndarray,
    site: np.ndarray,
    cov: pd.DataFrame | None,
    harmonized: np.memmap,
) -> Any:
    """A harmonizer other than ComBat: fit on a lazy row view of the memmap, then transform."""
    import dask
    import dask.array as da

    n = raw.shape[0]
    block = getattr(model, "block_features", None) or 20_000
    train_X = raw
    if not train.all():  # a lazy row selection (no copy); name given: no hashing of the file
        view = da.from_array(raw, chunks=(n, block), asarray=True, name="voxelwise-raw")
        train_X = view[np.flatnonzero(train)]
    with dask.config.set(scheduler="threads"):  # the memmap lives here, not on workers
        model.fit(train_X, site[train], None if cov is None else cov[train].reset_index(drop=True))
    unseen = ~np.isin(site, np.asarray(model.sites_, dtype=object))
    if unseen.any():
        model.add_sites(
            raw[unseen], site[unseen], None if cov is None else cov[unseen].reset_index(drop=True)
        )
    model.transform(raw, site, cov, out=harmonized)
    return model


def run_voxelwise_harmonization(
    maps: Mapping[str, str | Path],
    mask: nib.spatialimages.SpatialImage,
    participants: pd.DataFrame,
    options: GaugeOptions,
    out_dir: Path,
    work_dir: Path,
    seed: int,
    client: Any = None,
    entities: str = "space-MNI152NLin2009aSym_res-2_label-GM",
    suffix: str = "probseg",
    normalize: IntensityNormalizer | None = None,
) -> dict[str, Any]:
    """Harmonize template-space maps voxel by voxel; write one harmonized map per subject.

    Parameters
    ----------
    maps : mapping
        Participant label → template-space map (all on the mask's grid).
    mask : nibabel image
        Voxels to harmonize (> 0.5).
    participants : DataFrame
        Index participant label; ``site`` and the covariate columns.
    options : GaugeOptions
    out_dir : Path
        Receives ``sub-X_<entities>_desc-harmonized_<suffix>.nii.gz``, the model, QC tables and
        figures.
    work_dir : Path
        Scratch folder for the memory-mapped matrices (shared with the workers on a cluster).
    seed : int
        Seeds the QC voxel sample, folds and permutations.
    client : distributed.Client, optional
        Where loading and writing run (see :func:`pipeline.dask_cluster.dask_client`); None:
        dask's threaded scheduler.
    entities, suffix : str
        BIDS entities and suffix of the output file names.
    normalize : IntensityNormalizer, optional
        Per-image intensity normalization before masking (T1w maps).

    Returns
    -------
    dict
        QC summary (as :func:`~pipeline.gauge.run_harmonization`) with ``n_voxels`` and paths.
    """
    import dask

    from pipeline.gauge._registry import build_harmonizer
    from pipeline.gauge._run import _check_inputs, train_mask, write_quality_control

    subjects = list(maps)
    _check_inputs(pd.DataFrame(index=pd.Index(subjects)), participants, options)
    shape = tuple(int(n) for n in mask.shape[:3])
    flat_index = np.flatnonzero(np.asarray(mask.get_fdata()).reshape(-1) > 0.5)
    n, p = len(subjects), flat_index.size
    # one graph node each: passed as plain arguments, the arrays would be serialized into every
    # task (a 2 mm mask index is 1.9 MB; × 1,100 subjects × 2 steps)
    shared_index = dask.delayed(flat_index, pure=True)
    shared_normalize = dask.delayed(normalize, pure=True) if normalize is not None else None
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    raw_path, harm_path = work_dir / "voxelwise_raw.npy", work_dir / "voxelwise_harmonized.npy"
    log.info("voxel-wise ComBat: %d subjects × %d voxels", n, p)
    try:
        raw = np.lib.format.open_memmap(raw_path, mode="w+", dtype=np.float32, shape=(n, p))
        load = [
            dask.delayed(_row_or_error)(
                str(maps[s]), shared_index, shape, shared_normalize, dask_key_name=f"load-{i}"
            )
            for i, s in enumerate(subjects)
        ]
        left_out: dict[str, str] = {}
        for done, (i, row) in enumerate(_gather(client, load, "load maps"), start=1):
            if isinstance(row, str):  # a bad map costs its subject, not the others
                log.warning("sub-%s left out of voxel-wise harmonization: %s", subjects[i], row)
                left_out[subjects[i]] = row
            else:
                raw[i] = row
            if done % 32 == 0:  # keep the written pages out of this process's resident set
                raw.flush()
                _release(raw)
        raw.flush()
        _release(raw)
        if left_out:
            keep = [i for i, s in enumerate(subjects) if s not in left_out]
            subjects = [subjects[i] for i in keep]
            raw = _keep_rows(raw, raw_path, keep)
            n = len(subjects)
        parts = _check_inputs(pd.DataFrame(index=pd.Index(subjects)), participants, options)
        if parts["site"].nunique() < 2:
            raise HarmonizationError(
                f"voxel-wise harmonization needs maps from two sites; {len(left_out)} bad map(s) "
                f"left {n} subject(s) of one site (first: {next(iter(left_out.values()), '')})"
            )
        train = train_mask(parts, options)
        site = parts["site"].astype(str).to_numpy(dtype=object)
        cov = parts[list(options.covariates)].reset_index(drop=True) if options.covariates else None

        model = build_harmonizer(options)
        harmonized = np.lib.format.open_memmap(harm_path, mode="w+", dtype=np.float32, shape=(n, p))
        if isinstance(model, ComBat):
            model = _combat_mapreduce(model, raw, train, site, cov, harmonized, client)
        else:  # another registered harmonizer: its own streaming fit in this process
            model = _fit_apply_in_process(model, raw, train, site, cov, harmonized)
        harmonized.flush()
        del harmonized

        write = [
            dask.delayed(_write_map)(
                str(harm_path),
                i,
                shared_index,
                mask.affine,
                shape,
                str(out_dir / f"sub-{s}_{entities}_desc-harmonized_{suffix}.nii.gz"),
                dask_key_name=f"write-{i}",
            )
            for i, s in enumerate(subjects)
        ]
        written = dict(_gather(client, write, "write maps"))
        paths: dict[str, Any] = {"maps": [written[i] for i in range(n)]}
        paths["model"] = model.save(out_dir / "combat_model.npz")

        rng = np.random.default_rng(seed)
        cols = np.sort(rng.choice(p, size=min(p, options.qc_max_features), replace=False))
        before = _columns(raw, cols)
        after = _columns(np.load(harm_path, mmap_mode="r"), cols)
        summary = write_quality_control(
            before,
            after,
            parts,
            train,
            site,
            options,
            model,
            out_dir,
            seed,
            paths,
            extra={"n_voxels": int(p), "n_voxels_qc": int(cols.size), "left_out": left_out},
        )
    finally:
        for path in (raw_path, harm_path):
            path.unlink(missing_ok=True)
    return summary


def t1w_normalizer(
    maps: Mapping[str, Path], participants: pd.DataFrame, options: GaugeOptions, mask: np.ndarray
) -> IntensityNormalizer | None:
    """The per-image normalizer of template-space T1w maps (``gauge.intensity_method``), Nyúl's
    standard histogram fitted on the training subjects only (None for ``"none"``)."""
    if options.intensity_method == "none":
        return None
    nyul = None
    if options.intensity_method == "nyul":
        from pipeline.gauge._intensity import NyulStandardizer
        from pipeline.gauge._run import train_mask

        chosen = train_mask(participants.loc[list(maps)], options)
        train = [s for s, t in zip(maps, chosen, strict=True) if t]
        nyul = NyulStandardizer().fit(
            [np.asarray(nib.load(maps[s]).dataobj, dtype=np.float32) for s in train],
            [mask] * len(train),
        )
    return IntensityNormalizer(options.intensity_method, mask, nyul)
