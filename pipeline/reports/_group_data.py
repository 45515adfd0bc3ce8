"""Group-level facts for the reports: source BIDS folder, participants, harmonization embedding,
leave-site-out results of the ROI models."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from pipeline.io import read_json
from pipeline.reports.collect import read_table

logger = logging.getLogger(__name__)

#: at most this many features are read from the harmonized table for the embedding
MAX_EMBED_FEATURES = 2000


def template(resolution: int):
    """The MNI template at ``resolution`` mm (one indirection so tests can substitute a small one)."""
    from pipeline.data.templates import load_template

    return load_template(resolution if resolution in (1, 2) else 2)


def source_bids_dir(output_dir: Path) -> Path | None:
    """The BIDS folder named in ``dataset_description.json`` (``SourceDatasets[].URL`` file://)."""
    desc = Path(output_dir) / "dataset_description.json"
    if not desc.exists():
        return None
    try:
        sources = read_json(desc).get("SourceDatasets", [])
    except (OSError, ValueError):
        return None
    for src in sources:
        url = urlparse(str(src.get("URL", "")))
        if url.scheme == "file" and Path(unquote(url.path)).is_dir():
            return Path(unquote(url.path))
    return None


def participants_table(bids_dir: Path | None) -> pd.DataFrame:
    """``participants.tsv`` indexed by label without ``sub-`` (empty when there is none)."""
    if bids_dir is None or not (Path(bids_dir) / "participants.tsv").exists():
        return pd.DataFrame()
    table = read_table(Path(bids_dir) / "participants.tsv")
    if table is None or "participant_id" not in table:
        return pd.DataFrame()
    table["participant_id"] = table["participant_id"].astype(str).str.removeprefix("sub-")
    return table.set_index("participant_id")


def _gm_row(
    output_dir: Path, subject: str, mask: np.ndarray, columns: np.ndarray
) -> np.ndarray | None:
    import nibabel as nib

    from pipeline.outputs import ANAT_OUTPUTS, find_output

    hit = find_output(ANAT_OUTPUTS["std_gm_probseg"], output_dir, subject)
    if hit is None:
        return None
    data = np.asarray(nib.load(hit).dataobj, dtype=np.float32)
    if data.shape != mask.shape:
        return None
    return data[mask][columns]


def _labels(values: pd.Series | pd.Index) -> pd.Index:
    """Participant labels as text without ``sub-`` (``01`` stays ``01``, never the number 1)."""
    return pd.Index(values.astype(str)).str.removeprefix("sub-")


def _read_features(path: Path, index_col: str, columns: np.ndarray) -> pd.DataFrame:
    """Columns ``columns`` of a features TSV, indexed by participant label read as text."""
    table = pd.read_csv(
        path, sep="\t", usecols=[index_col, *columns], dtype={index_col: str}
    ).set_index(index_col)
    table.index = _labels(table.index)
    return table


def harmonization_embedding(output_dir: Path, resolution: int = 2) -> pd.DataFrame | None:
    r"""Two principal components of GM features before and after ComBat, on shared axes.

    With :math:`X` the subjects' features before harmonization (a sample of at most
    :data:`MAX_EMBED_FEATURES` voxels), mean :math:`\mu` and top right-singular vectors
    :math:`V_2` of :math:`X - \mu`, both :math:`(X - \mu) V_2` and :math:`(X_h - \mu) V_2` are
    returned, so site clusters that ComBat removed visibly collapse.
    The result is cached in ``group/figures/harmonization_embedding.tsv``.

    Returns
    -------
    DataFrame or None
        Index participant label; columns ``pc1_before``, ``pc2_before``, ``pc1_after``,
        ``pc2_after``. ``None`` when harmonization has not run.
    """
    output_dir = Path(output_dir)
    harm = output_dir / "group" / "harmonization" / "desc-harmonized_features.tsv"
    cache = output_dir / "group" / "figures" / "harmonization_embedding.tsv"
    if not harm.exists():
        return None
    header = pd.read_csv(harm, sep="\t", nrows=0).columns
    index_col, feat_cols = header[0], np.asarray(header[1:])
    labels = _labels(pd.read_csv(harm, sep="\t", usecols=[index_col], dtype=str)[index_col])
    if cache.exists() and cache.stat().st_mtime >= harm.stat().st_mtime:
        cached = pd.read_csv(cache, sep="\t", dtype={"participant": str})
        if "participant" in cached and set(cached["participant"]) <= set(labels):
            return cached.set_index("participant")
        logger.info("%s: labels unlike the harmonized table's; recomputed", cache)
    from pipeline.io import write_text

    rng = np.random.default_rng(0)
    pick = np.sort(
        rng.choice(len(feat_cols), size=min(MAX_EMBED_FEATURES, len(feat_cols)), replace=False)
    )
    after = _read_features(harm, index_col, feat_cols[pick])
    original = harm.with_name("desc-original_features.tsv")
    if original.exists():  # the features as they went into ComBat
        raw = _read_features(original, index_col, feat_cols[pick])
        rows = {s: raw.loc[s].to_numpy() if s in raw.index else None for s in after.index}
    else:  # older runs: voxel-indexed GM features, read back from the maps
        mask = template(resolution).mask.get_fdata() > 0
        try:
            columns = feat_cols[pick].astype(int)
        except ValueError:
            logger.warning("%s: no original features beside it; no embedding", harm)
            return None
        if mask.sum() <= columns.max():
            return None
        rows = {s: _gm_row(output_dir, s, mask, columns) for s in after.index}
    keep = [s for s, r in rows.items() if r is not None]
    if len(keep) < 3:
        return None
    before = np.stack([rows[s] for s in keep]).astype(np.float64)
    post = after.loc[keep].to_numpy(dtype=np.float64)
    mu = before.mean(axis=0)
    _, _, vt = np.linalg.svd(before - mu, full_matrices=False)
    v = vt[:2].T
    pb, pa = (before - mu) @ v, (post - mu) @ v
    table = pd.DataFrame(
        {
            "pc1_before": pb[:, 0],
            "pc2_before": pb[:, 1] if pb.shape[1] > 1 else 0.0,
            "pc1_after": pa[:, 0],
            "pc2_after": pa[:, 1] if pa.shape[1] > 1 else 0.0,
        },
        index=pd.Index(keep, name="participant"),
    )
    write_text(cache, table.to_csv(sep="\t"))
    return table


#: how the group report names the models of a leave-site-out ROI run (``symprep train --model
#: roiset``); other names are shown as they are
ROI_MODEL_LABELS = {
    "roiset": "roiset (set model on FC)",
    "tangent_logreg": "tangent FC + logistic regression",
    "flat_mlp": "MLP on flattened FC",
}


def is_roi_experiment(metrics: dict) -> bool:
    """Whether ``metrics`` (a run's ``metrics.json``) is a leave-site-out ROI experiment."""
    return metrics.get("split") == "leave-site-out" and isinstance(metrics.get("overall"), dict)


def roi_fold_accuracies(runs: dict[str, dict]) -> pd.DataFrame:
    """Held-out accuracy per run, fold (site) and model of leave-site-out ROI experiments.

    Parameters
    ----------
    runs : dict
        Run name -> its ``metrics.json`` (as :func:`pipeline.models.roi_experiment.
        run_roi_experiment` writes it: ``folds`` of ``{"site", "n_test", model: {"accuracy",
        ...}}``, ``overall`` per model).

    Returns
    -------
    DataFrame
        Columns ``run``, ``site``, ``model``, ``n_test``, ``accuracy``, ``balanced_accuracy``;
        one row per fold and model (models in the order of ``overall``).
    """
    rows = []
    for run, m in runs.items():
        models = list(m.get("overall") or {})
        for fold in m.get("folds") or []:
            for model in models:
                res = fold.get(model)
                if isinstance(res, dict) and "accuracy" in res:
                    rows.append(
                        {
                            "run": run,
                            "site": str(fold.get("site", "")),
                            "model": model,
                            "n_test": fold.get("n_test", res.get("n")),
                            "accuracy": float(res["accuracy"]),
                            "balanced_accuracy": res.get("balanced_accuracy"),
                        }
                    )
    columns = ["run", "site", "model", "n_test", "accuracy", "balanced_accuracy"]
    return pd.DataFrame(rows, columns=columns)
