"""``symprep harmonize``: distributed ComBat for a consortium whose sites keep their data.

Example (each site runs the first and last step on its own machine)::

    symprep harmonize site-stats --features site1_features.tsv --participants participants.tsv \\
        --covariates age sex -o site1_stats.npz
    symprep harmonize fit site1_stats.npz site2_stats.npz site3_stats.npz -o combat_model.npz
    symprep harmonize apply --model combat_model.npz --features site1_features.tsv \\
        --participants participants.tsv -o site1_harmonized.tsv

Features are a TSV (first column ``participant_id``, one column per feature) or an ``.npy``
matrix (rows in the order of the participants file). See :mod:`pipeline.gauge._distributed` for
what a statistics file contains.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.errors import InputError

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``harmonize`` and its three steps on the ``symprep`` subcommand parser."""
    p = subparsers.add_parser(
        "harmonize",
        help="distributed ComBat: site summaries, a joint fit, local adjustment",
        description=__doc__.split("\n\n")[0],
    )
    steps = p.add_subparsers(dest="step", required=True)

    def data_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--features", type=Path, required=True, help="features (.tsv or .npy)")
        q.add_argument(
            "--participants", type=Path, required=True, help="participants.tsv (site column)"
        )
        q.add_argument("--site-column", default="site", help="column with the site label")
        q.add_argument("--block-mb", type=int, default=32, help="float64 MB per block")

    s = steps.add_parser("site-stats", help="summarize this site's data (no subject values)")
    data_args(s)
    s.add_argument("--covariates", nargs="*", default=[], help="participants columns to keep")
    s.add_argument("--min-subjects", type=int, default=10, help="fewest subjects per site")
    s.add_argument("-o", "--output", type=Path, required=True, help="statistics file (.npz)")
    f = steps.add_parser("fit", help="combine the sites' statistics into a ComBat model")
    f.add_argument("stats", nargs="+", type=Path, help="site statistics files")
    f.add_argument("--unseen", nargs="*", type=Path, default=[], help="sites added frozen")
    f.add_argument("--ref-site", default=None, help="reference site left unchanged")
    f.add_argument("--non-parametric", action="store_true", help="non-parametric EB")
    f.add_argument("--no-eb", action="store_true", help="no empirical-Bayes shrinkage")
    f.add_argument("--mean-only", action="store_true", help="adjust locations only")
    f.add_argument("-o", "--output", type=Path, required=True, help="model file (.npz)")
    a = steps.add_parser("apply", help="adjust this site's data with the model")
    data_args(a)
    a.add_argument("--model", type=Path, required=True, help="model written by fit")
    a.add_argument("-o", "--output", type=Path, required=True, help="harmonized .tsv or .npy")
    p.set_defaults(func=run)
    return p


def _read(features: Path, participants: Path, site_column: str) -> tuple[Any, pd.DataFrame, Any]:
    """(X, participants rows in X's order, feature names or None)."""
    if not features.is_file():
        raise InputError("features file does not exist", features)
    if not participants.is_file():
        raise InputError("participants file does not exist", participants)
    parts = pd.read_csv(participants, sep="\t", dtype={"participant_id": str})
    if "participant_id" not in parts.columns or site_column not in parts.columns:
        raise InputError(f"needs columns 'participant_id' and '{site_column}'", participants)
    parts = parts.set_index("participant_id")
    if features.suffix == ".npy":
        X = np.load(features, mmap_mode="r")
        if X.ndim != 2 or X.shape[0] != len(parts):
            raise InputError(
                f"matrix of shape {X.shape} does not have one row per participant "
                f"({len(parts)} in {participants.name})",
                features,
            )
        return X, parts, None
    table = pd.read_csv(features, sep="\t", index_col=0, dtype={0: str})
    table.index = table.index.astype(str)
    missing = [s for s in table.index if s not in parts.index]
    if missing:
        raise InputError(
            f"{len(missing)} row(s) not in {participants.name} (first: {missing[0]})", features
        )
    try:
        X = table.to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"features are not all numbers ({exc})", features) from exc
    return X, parts.loc[table.index], list(table.columns)


def _covariates(parts: pd.DataFrame, names: list[str], where: Path) -> pd.DataFrame | None:
    absent = [c for c in names if c not in parts.columns]
    if absent:
        raise InputError(f"covariate column(s) {absent} are missing", where)
    return parts[names].reset_index(drop=True) if names else None


def run(args: argparse.Namespace) -> int:
    """Run one step; return 0."""
    from pipeline.gauge import (
        ComBat,
        HarmonizationError,
        SiteStatistics,
        add_site_statistics,
        fit_site_statistics,
        site_statistics,
        transform_mapreduce,
    )

    if args.step == "fit":
        stats = [SiteStatistics.load(p) for p in args.stats]
        estimator = ComBat(
            parametric=not args.non_parametric,
            eb=not args.no_eb,
            mean_only=args.mean_only,
            ref_batch=args.ref_site,
        )
        model = fit_site_statistics(estimator, stats)
        if args.unseen:
            add_site_statistics(model, [SiteStatistics.load(p) for p in args.unseen])
        path = model.save(args.output)
        logger.info("ComBat model of %d site(s): %s", len(model.sites_), path)
        return 0
    X, parts, names = _read(args.features, args.participants, args.site_column)
    site = parts[args.site_column].astype(str).to_numpy(dtype=object)
    block = args.block_mb << 20
    if args.step == "site-stats":
        cov = _covariates(parts, list(args.covariates), args.participants)
        stats = site_statistics(
            X, site, cov, feature_names=names, min_subjects=args.min_subjects, block_bytes=block
        )
        path = stats.save(args.output)
        logger.info("statistics of site(s) %s: %s", ", ".join(map(str, stats.sites)), path)
        return 0
    if not args.model.is_file():
        raise InputError("model file does not exist", args.model)
    model = ComBat.load(args.model)
    cov = _covariates(parts, list(model.encoding_.names), args.participants)
    out_path = Path(args.output)
    try:
        if out_path.suffix == ".npy":
            out = np.lib.format.open_memmap(out_path, mode="w+", dtype=X.dtype, shape=X.shape)
            transform_mapreduce(model, X, site, cov, out=out, block_bytes=block)
            out.flush()
        else:
            from pipeline.io import atomic_path

            harmonized = transform_mapreduce(model, X, site, cov, block_bytes=block)
            frame = pd.DataFrame(harmonized, index=parts.index, columns=names)
            frame.index.name = "participant_id"
            with atomic_path(out_path) as tmp:
                frame.to_csv(tmp, sep="\t", float_format="%.10g")
    except HarmonizationError as exc:
        raise HarmonizationError(exc.message, args.features) from exc
    logger.info("harmonized %d subject(s): %s", X.shape[0], out_path)
    return 0
