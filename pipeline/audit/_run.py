"""The invariance audit of one subject, its figure, and the group summary.

Layout of what it writes (``OUTPUT_DIR`` is the symprep derivatives dataset)::

    OUTPUT_DIR/sub-X/audit/sub-X_desc-invariance_residuals.tsv   one row per transform × output × measure
    OUTPUT_DIR/sub-X/audit/sub-X_desc-invariance_transforms.json the K group elements
    OUTPUT_DIR/sub-X/figures/sub-X_desc-invariance_audit.png     residuals per output
    OUTPUT_DIR/group/audit/invariance_summary.tsv                 (summarize_audits) across subjects

Scratch runs go to ``WORK_DIR/audit/sub-X/{reference,g01,...}`` (inputs ``bids``, derivatives
``derivatives``); the reference run is the untransformed subject processed in the same way.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pipeline.audit._compare import compare_derivatives
from pipeline.audit._transforms import AuditTransform, draw_transforms, write_transformed_dataset
from pipeline.bids_names import clean_label
from pipeline.errors import StageError
from pipeline.io import atomic_path, write_json

__all__ = ["run_audit", "residuals_path", "plot_residuals", "summarize_audits"]

logger = logging.getLogger(__name__)


def residuals_path(output_dir: Path, subject: str) -> Path:
    """Where the residual table of ``subject`` goes."""
    sub = clean_label(subject)
    return Path(output_dir) / f"sub-{sub}" / "audit" / f"sub-{sub}_desc-invariance_residuals.tsv"


def figure_path(output_dir: Path, subject: str) -> Path:
    sub = clean_label(subject)
    return Path(output_dir) / f"sub-{sub}" / "figures" / f"sub-{sub}_desc-invariance_audit.png"


def _run_one(bids_dir: Path, derivatives: Path, work: Path, subject: str, config, nprocs: int):
    from pipeline.bids import check_bids_dir
    from pipeline.workflows.participant import run_participant

    layout = check_bids_dir(bids_dir, validate=False)
    return run_participant(layout, subject, derivatives, work, config, nprocs)


def run_audit(
    bids_dir: Path,
    output_dir: Path,
    subject: str,
    n_transforms: int,
    config,
    *,
    seed: int = 0,
    work_dir: Path | None = None,
    nprocs: int = 1,
    transforms: list[AuditTransform] | None = None,
    progress: bool = True,
    reference_dir: Path | None = None,
) -> pd.DataFrame:
    """Audit how invariant the participant stage is for one subject.

    Applies ``n_transforms`` random group elements (:func:`draw_transforms` with ``seed``) to the
    subject's raw T1w (and BOLD), reruns the participant stage on each copy and on the
    untransformed subject, and measures each output's residual (:func:`compare_derivatives`).

    Parameters
    ----------
    bids_dir, output_dir : Path
        Raw BIDS dataset; symprep derivatives dataset (tables and figure are written there).
    subject : str
        Participant label.
    n_transforms : int
        Number K of random group elements.
    config : pipeline.config.Config
        Configuration of the participant stage (its ``seed`` seeds the registrations).
    seed : int, default=0
        Seed of the random group elements.
    work_dir : Path, optional
        Scratch space; default ``OUTPUT_DIR_work`` beside ``OUTPUT_DIR`` (runs go to ``audit/sub-X``).
    transforms : list of AuditTransform, optional
        Use these instead of random ones.
    progress : bool, default=True
        Show a progress bar over the runs.
    reference_dir : Path, optional
        Derivatives of the untransformed subject made with the same ``config`` (e.g.
        ``output_dir`` itself, as the Snakemake group stage does): compared with instead of a
        rerun of the untransformed subject, which saves one participant run.

    Returns
    -------
    pandas.DataFrame
        The residual table (also written to :func:`residuals_path`).

    Raises
    ------
    pipeline.errors.StageError
        The untransformed reference run failed, or ``reference_dir`` has no outputs of the
        subject (nothing to compare with).
    """
    from tqdm.auto import tqdm

    from pipeline.bids import bold_files, check_bids_dir, t1w_file

    sub = clean_label(subject)
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    work = Path(work_dir) if work_dir else output_dir.parent / f"{output_dir.name}_work"
    work = work / "audit" / f"sub-{sub}"
    layout = check_bids_dir(bids_dir, validate=False)
    t1w = t1w_file(layout, sub)
    bold = bold_files(layout, sub) if hasattr(config, "func") and config.func.enabled else []
    if transforms is None:
        n_vol = None
        if bold:
            import nibabel as nib

            n_vol = nib.load(bold[0]).shape[-1]
        transforms = draw_transforms(n_transforms, seed, n_volumes=n_vol)
    identity = AuditTransform(name="reference", orientation=None)
    runs = [identity, *transforms]
    ref = work / identity.name / "derivatives"
    if reference_dir is not None:
        ref = Path(reference_dir)
        if not (ref / f"sub-{sub}").is_dir():
            raise StageError(f"audit of sub-{sub}: no reference outputs in {ref}")
        logger.info("audit sub-%s: reference outputs %s (no rerun)", sub, ref)
        runs = list(transforms)

    results = {}
    for tr in tqdm(runs, desc=f"audit sub-{sub}", unit="run", disable=not progress):
        root = work / tr.name
        inputs = write_transformed_dataset(bids_dir, sub, t1w, bold, tr, root / "bids")
        res = _run_one(inputs, root / "derivatives", root / "work", sub, config, nprocs)
        results[tr.name] = res
        if tr is identity and not res.ok and not (root / "derivatives" / f"sub-{sub}").is_dir():
            raise StageError(f"audit of sub-{sub}: the untransformed run failed ({res.error})")
        logger.info("audit sub-%s %s: %s", sub, tr.name, "ok" if res.ok else f"failed: {res.error}")

    frames = []
    for tr in transforms:
        df = compare_derivatives(ref, work / tr.name / "derivatives", sub, tr.time_shift)
        for key, value in tr.summary().items():
            df[key] = value
        df["run_ok"] = results[tr.name].ok
        df["error"] = results[tr.name].error or ""
        frames.append(df)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    table.insert(0, "subject", f"sub-{sub}")
    dest = residuals_path(output_dir, sub)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    write_json(
        dest.with_name(f"sub-{sub}_desc-invariance_transforms.json"),
        {"seed": seed, "transforms": [asdict(t) for t in transforms]},
    )
    plot_residuals(table, figure_path(output_dir, sub), title=f"sub-{sub}: invariance audit")
    logger.info("audit sub-%s: %d residuals in %s", sub, len(table), dest)
    return table


def plot_residuals(table: pd.DataFrame, dest: Path, title: str = "invariance audit") -> Path:
    """Dot plot of residuals per output × measure (one dot per transform, median marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    keys = (table["output"] + " · " + table["measure"]).tolist() if len(table) else []
    labels = list(dict.fromkeys(keys))
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(labels), 3) + 1.2))
    for i, lab in enumerate(labels):
        vals = table.loc[[k == lab for k in keys], "residual"].to_numpy(float)
        ax.scatter(vals, [i] * len(vals), s=18, alpha=0.7, color="tab:blue")
        if len(vals):
            ax.plot([pd.Series(vals).median()] * 2, [i - 0.3, i + 0.3], color="k", lw=1.5)
    short = [re.sub(r"space-[^_]+_(res-[^_]+_)?", "", lab) for lab in labels]
    ax.set_yticks(range(len(labels)), short, fontsize=7)
    ax.set_xlabel("residual vs untransformed run (0 = invariant)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(dest) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return dest


def summarize_audits(output_dir: Path) -> pd.DataFrame:
    """Group summary of every audited subject: per output × measure, the number of subjects and
    transforms and the median, 90th percentile and maximum residual. Written with a figure to
    ``OUTPUT_DIR/group/audit/``; an empty frame when no subject was audited."""
    output_dir = Path(output_dir)
    tables = [
        pd.read_csv(p, sep="\t")
        for p in sorted(output_dir.glob("sub-*/audit/*_desc-invariance_residuals.tsv"))
    ]
    tables = [t for t in tables if len(t)]
    if not tables:
        return pd.DataFrame()
    allres = pd.concat(tables, ignore_index=True)
    keys = [c for c in ("stage", "output", "measure") if c in allres]
    summary = (
        allres.groupby(keys)
        .agg(
            n_subjects=("subject", "nunique"),
            n_transforms=("residual", "size"),
            median=("residual", "median"),
            p90=("residual", lambda s: s.quantile(0.9)),
            max=("residual", "max"),
        )
        .reset_index()
    )
    dest = output_dir / "group" / "audit" / "invariance_summary.tsv"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        summary.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    plot_residuals(
        allres, dest.with_name("invariance_summary.png"), title="invariance audit, all subjects"
    )
    return summary
