"""Group HTML report ``OUTPUT_DIR/group/report.html`` built from the group outputs that exist.

Sections: a sortable participants table (status, site, registration and functional QC, flags,
link to each subject's report), the registration-QC distribution, harmonization (site prediction
before/after, biology kept, the subjects' embedding), the model grid and training curves, the
leave-site-out accuracy of the ROI models beside their baselines, and the invariance-audit
summary. Figures are PNG files in ``group/figures/`` (harmonization figures are linked where
:func:`pipeline.gauge.run_harmonization` wrote them).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.io import read_json
from pipeline.reports._group_data import (
    ROI_MODEL_LABELS,
    harmonization_embedding,
    is_roi_experiment,
    participants_table,
    roi_fold_accuracies,
    source_bids_dir,
)
from pipeline.reports._group_figures import (
    embedding_figure,
    qc_distribution_figure,
    roi_accuracy_figure,
    training_curves_figure,
)
from pipeline.reports._render import Figure, render_page
from pipeline.reports._tables import audit_tables, fmt, frame_table
from pipeline.reports.collect import collect_subject, read_table, subjects_in
from pipeline.reports.methods import Methods, group_methods, snakemake_sentence

logger = logging.getLogger(__name__)

SECTIONS = ["participants", "registration-qc", "harmonization", "models", "invariance", "methods"]
_THRESHOLDS = {
    "qc_min_mi": "mi",
    "qc_min_rank_corr": "rank_corr",
    "qc_min_wm_dice": "wm_dice",
    "qc_max_folding": "folding",
}
_FUNC_QC = ("fd_mean", "pct_outliers", "tsnr_median")


def _read(path: Path) -> dict[str, Any]:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return {}


def _cell(value: Any, cls: str = "", href: str = "") -> dict[str, Any]:
    text = fmt(value)
    num = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    sort = text if num is None or (isinstance(num, float) and math.isnan(num)) else repr(num)
    return {"text": text, "value": sort, "cls": cls, "href": href}


def _participants(output_dir: Path, sites: pd.DataFrame) -> tuple[dict, pd.DataFrame, dict]:
    """Participants table, the registration-QC metrics frame and the QC thresholds."""
    status_tsv = output_dir / "group" / "participants_status.tsv"
    status = read_table(status_tsv) if status_tsv.exists() else None
    subjects = subjects_in(output_dir)
    if status is not None and "participant" in status:
        subjects = sorted(
            set(subjects) | set(status["participant"].astype(str).str.removeprefix("sub-"))
        )
        status = status.assign(
            participant=status["participant"].astype(str).str.removeprefix("sub-")
        ).set_index("participant")
    qc_rows, thresholds, rows = {}, {}, []
    metric_cols: list[str] = []
    for sub in subjects:
        out = collect_subject(output_dir, sub)
        qc = _read(out.anat["qc_json"]) if "qc_json" in out.anat else {}
        for key, metric in _THRESHOLDS.items():
            if key in qc.get("thresholds", {}):
                thresholds[metric] = (
                    "min" if "min" in key else "max",
                    float(qc["thresholds"][key]),
                )
        metrics = {
            k: v for k, v in qc.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        metric_cols += [k for k in metrics if k not in metric_cols]
        if metrics:
            qc_rows[sub] = metrics
        fqc = _read(out.func["qc_json"]) if "qc_json" in out.func else {}
        if status is not None and sub in status.index:
            st = str(status.loc[sub, "status"])
            err = status.loc[sub, "error"] if "error" in status else ""
            stage = status.loc[sub, "stage"] if "stage" in status else ""
        else:
            st = "ok" if out.status else ("failed" if out.failure else "missing")
            err = (out.failure or {}).get("error", "")
            stage = (out.failure or {}).get("stage", "")
        err = "" if isinstance(err, float) else str(err)
        stage = "" if isinstance(stage, float) else str(stage)
        flags = list(qc.get("failures", []))
        if st != "ok":
            flags.insert(0, f"{stage or 'run'}: {err}" if err else st)
        report = output_dir / f"sub-{sub}.html"
        rows.append(
            {
                "sub": _cell(
                    f"sub-{sub}",
                    href=os.path.relpath(report, output_dir / "group") if report.exists() else "",
                ),
                "site": _cell(sites["site"].get(sub, "") if "site" in sites else ""),
                "status": _cell(st, {"ok": "ok", "failed": "fail"}.get(st, "warn")),
                "qc": _cell(
                    "" if "passed" not in qc else ("pass" if qc["passed"] else "FAIL"),
                    "" if "passed" not in qc else ("ok" if qc["passed"] else "fail"),
                ),
                "metrics": metrics,
                "func": {k: fqc.get(k) for k in _FUNC_QC},
                "flags": _cell("; ".join(flags), "fail" if flags else ""),
            }
        )
    func_cols = [k for k in _FUNC_QC if any(r["func"][k] is not None for r in rows)]
    table = {
        "columns": [
            "participant",
            "site",
            "status",
            "registration QC",
            *metric_cols,
            *func_cols,
            "flags",
        ],
        "rows": [
            [
                r["sub"],
                r["site"],
                r["status"],
                r["qc"],
                *[_cell(r["metrics"].get(c)) for c in metric_cols],
                *[_cell(r["func"][c]) for c in func_cols],
                r["flags"],
            ]
            for r in rows
        ],
    }
    qc_frame = pd.DataFrame.from_dict(qc_rows, orient="index")
    return table, qc_frame, thresholds


#: harmonized feature sets: sub-folder of group/harmonization ("" = the regional GM at the top)
FEATURE_SETS = [
    ("", "Regional GM"),
    ("fc", "FC edges"),
    ("gm_voxelwise", "GM maps, voxel-wise"),
    ("t1w_voxelwise", "T1w, voxel-wise"),
]


def _feature_sets(hdir: Path) -> pd.DataFrame | None:
    """One row per harmonized feature set: sizes, site prediction before/after, biology kept."""
    rows = []
    for sub, label in FEATURE_SETS:
        path = hdir / sub / "qc.json"
        if not path.exists():
            continue
        qc = _read(path)
        pred = qc.get("site_prediction", {})
        effects = [e.get("t_map_correlation") for e in qc.get("effects", [])]
        effects = [e for e in effects if isinstance(e, int | float) and math.isfinite(e)]
        rows.append(
            {
                "feature set": label,
                "subjects": qc.get("n_subjects"),
                "features": qc.get("n_voxels", qc.get("n_features")),
                "site BA before": pred.get("before", {}).get("balanced_accuracy"),
                "site BA after": pred.get("after", {}).get("balanced_accuracy"),
                "chance": pred.get("before", {}).get("chance"),
                "p after": pred.get("after", {}).get("p_value"),
                "min t-map r": min(effects) if effects else None,
            }
        )
    return pd.DataFrame(rows) if rows else None


def _harmonization(
    output_dir: Path, sites: pd.DataFrame, fig_dir: Path
) -> tuple[dict | None, list[Figure], dict]:
    hdir = output_dir / "group" / "harmonization"
    qc = _read(hdir / "qc.json") if (hdir / "qc.json").exists() else {}
    tables = []
    for name, title in (
        ("site_prediction.tsv", "Site prediction before / after ComBat"),
        ("effects.tsv", "Biological effects kept"),
    ):
        frame = read_table(hdir / name) if (hdir / name).exists() else None
        if frame is not None:
            tables.append(frame_table(frame, title))
    group_dir = output_dir / "group"
    figures = [
        Figure(p.stem, os.path.relpath(p, group_dir).replace(os.sep, "/"), caption, *_png_size(p))
        for p, caption in (
            (
                hdir / "site_prediction.png",
                "Site-prediction balanced accuracy before and after harmonization.",
            ),
            (hdir / "effect_maps.png", "Biological effect maps before and after harmonization."),
            (
                hdir / "site_pc1.png",
                "Site means along the first principal component before and after.",
            ),
        )
        if p.exists()
    ]
    difference = _gm_difference(output_dir, fig_dir)
    if difference is not None:
        tables.append(difference[0])
        if difference[1] is not None:
            figures.append(difference[1])
    feature_sets = _feature_sets(hdir)
    if feature_sets is not None:
        tables.insert(0, frame_table(feature_sets, "Harmonized feature sets"))
    for sub, label in FEATURE_SETS[1:]:
        fig = hdir / sub / "site_prediction.png"
        if fig.exists():
            figures.append(
                Figure(
                    f"{sub}_site_prediction",
                    os.path.relpath(fig, group_dir).replace(os.sep, "/"),
                    f"{label}: site-prediction balanced accuracy before and after harmonization.",
                    *_png_size(fig),
                )
            )
    emb = None
    try:
        emb = harmonization_embedding(output_dir)
    except Exception as exc:  # noqa: BLE001
        logger.warning("harmonization embedding skipped: %s", exc)
    if emb is not None:
        figures.append(
            embedding_figure(
                emb,
                sites.get("site", None),
                fig_dir / "harmonization_embedding.png",
                group_dir,
            )
        )
    if not tables and not figures:
        return None, [], qc
    return {"tables": tables, "figures": figures}, figures, qc


def _png_size(path: Path) -> tuple[int, int]:
    """Pixel width and height from a PNG header."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0, 0
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


#: VAE evaluation columns of the group report: header -> path into the run's metrics.json
_VAE_COLUMNS = {
    "encoder": ("encoder",),
    "latent": ("latent_dim",),
    "β": ("beta",),
    "test MSE": ("test", "mse"),
    "test SSIM": ("test", "ssim"),
    "train MSE": ("train", "mse"),
    "train SSIM": ("train", "ssim"),
    "Δμ cube rotations": ("invariance", "cube_rotations", "mean"),
    "Δμ SO(3) (÷ spread)": ("invariance", "so3", "subjects", "error"),
    "Δμ pose, registered (÷ spread)": ("pose_invariance", "registered", "spread_units"),
    "Δμ pose, native (÷ spread)": ("pose_invariance", "native", "spread_units"),
    "Δμ gain (exact: z-scored)": ("invariance", "gain", "mean"),
    "Δμ contrast": ("invariance", "contrast", "mean"),
    "Δμ bias field": ("invariance", "bias_field", "mean"),
    "site BA from μ": ("site_prediction", "balanced_accuracy"),
    "site BA after ComBat": ("site_prediction", "balanced_accuracy_combat"),
    "chance": ("site_prediction", "chance"),
}
_VAE_CAPTIONS = {
    "latent_traversals": "latent traversals: the decoder at the mean μ moved by t prior standard "
    "deviations along the latent dimensions with the largest KL (axial mid-slices; last column: "
    "difference between the extreme steps).",
    "samples": "samples: decoded draws z ~ N(0, I) (axial mid-slices).",
}


def _get(tree: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _vae_section(runs: list[tuple[str, Path, dict[str, Any]]], group_dir: Path) -> dict | None:
    """Table of the VAE runs' evaluation (reconstruction, invariance of μ, site) and their
    figures (written by :mod:`pipeline.models.vae_report` beside each ``metrics.json``)."""
    rows, figures = [], []
    for name, run_dir, m in runs:
        rows.append([_cell(name)] + [_cell(_get(m, path)) for path in _VAE_COLUMNS.values()])
        for key, entry in (m.get("figures") or {}).items():
            file = entry.get("file") if isinstance(entry, dict) else entry
            path = run_dir / str(file)
            if file and path.exists():
                caption = f"VAE {name}: " + _VAE_CAPTIONS.get(key, key.replace("_", " ") + ".")
                src = os.path.relpath(path, group_dir).replace(os.sep, "/")
                figures.append(Figure(f"{name}-{key}", src, caption, *_png_size(path)))
    if not rows:
        return None
    return {"table": {"columns": ["run", *_VAE_COLUMNS], "rows": rows}, "figures": figures}


#: columns of the ROI models' table: header -> key in ``overall[model]`` of the run's metrics
_ROI_COLUMNS = {
    "leave-site-out accuracy": "accuracy",
    "balanced accuracy": "balanced_accuracy",
    "AUC": "auc",
    "fold accuracy mean": "fold_accuracy_mean",
    "fold accuracy sd": "fold_accuracy_sd",
    "held-out subjects": "n",
}


def _roi_section(runs: dict[str, dict[str, Any]], fig_dir: Path, group_dir: Path) -> dict | None:
    """Leave-site-out results of the ROI runs (``symprep train --model roiset``): each model
    beside the baselines (pooled and per fold), and the per-fold figure."""
    if not runs:
        return None
    rows, chance = [], {}
    for run, m in runs.items():
        harmonized = "ComBat in each training fold" if m.get("harmonize") else "none"
        if m.get("chance") is not None:
            chance[run] = float(m["chance"])
        for model, res in m["overall"].items():
            res = res if isinstance(res, dict) else {}
            rows.append(
                [_cell(run), _cell(ROI_MODEL_LABELS.get(model, model))]
                + [_cell(res.get(key)) for key in _ROI_COLUMNS.values()]
                + [
                    _cell(len(m.get("folds") or [])),
                    _cell(m.get("chance")),
                    _cell(harmonized),
                    _cell(f"{m.get('source', '')}, {m.get('n_rois', '?')} ROIs"),
                ]
            )
    folds = roi_fold_accuracies(runs)
    fold_rows = []
    models = list(dict.fromkeys(folds["model"]))
    for (run, site), part in folds.groupby(["run", "site"], sort=False):
        acc = dict(zip(part["model"], part["accuracy"], strict=True))
        fold_rows.append(
            [_cell(run), _cell(site), _cell(part["n_test"].iloc[0])]
            + [_cell(acc.get(model)) for model in models]
        )
    fig = roi_accuracy_figure(
        folds, chance, ROI_MODEL_LABELS, fig_dir / "roi_leave_site_out.png", group_dir
    )
    return {
        "table": {
            "columns": [
                "run",
                "model",
                *_ROI_COLUMNS,
                "folds",
                "chance",
                "harmonization",
                "data",
            ],
            "rows": rows,
        },
        "folds": {
            "columns": ["run", "held-out site", "n", *[ROI_MODEL_LABELS.get(m, m) for m in models]],
            "rows": fold_rows,
        },
        "figures": [fig] if fig else [],
    }


#: where the ``benchmarks/vae_emergence.py`` figure is looked for: the run's group folder, then
#: the source checkout's benchmark outputs
_EMERGENCE = ("benchmarks/vae_emergence/vae_emergence.png",)


def _vae_emergence_figure(group_dir: Path, fig_dir: Path) -> list[Figure]:
    """The VAE-emergence benchmark's figure (issue 20), copied beside the report, when it exists."""
    import shutil

    repo = Path(__file__).resolve().parents[2]
    for path in [group_dir / p for p in _EMERGENCE] + [repo / p for p in _EMERGENCE]:
        if path.is_file():
            fig_dir.mkdir(parents=True, exist_ok=True)
            dest = fig_dir / path.name
            shutil.copyfile(path, dest)
            caption = (
                "VAE invariance vs reconstruction (benchmarks/vae_emergence.py): Δμ under small "
                "rotations (÷ μ's spread across subjects) against reconstruction MSE, one curve "
                "per latent size of the plain encoder, invariant encoders as markers."
            )
            src = os.path.relpath(dest, group_dir).replace(os.sep, "/")
            return [Figure("vae-emergence", src, caption, *_png_size(dest))]
    return []


def _run_label(run: str, metrics: dict[str, Any]) -> str:
    """``run`` for the methods text, with its model and VAE encoder when the name does not say them."""
    model = str(metrics.get("model", run))
    encoder = metrics.get("encoder")
    detail = ", ".join(
        [*([model] if model != run else []), *([f"{encoder} encoder"] if encoder else [])]
    )
    return f"{run} ({detail})" if detail else run


def _models(output_dir: Path, fig_dir: Path) -> tuple[dict | None, list[Figure], list[str]]:
    mdir = output_dir / "group" / "models"
    rows, logs, names, vae_runs, roi_runs = [], {}, [], [], {}
    for metrics_path in sorted(mdir.glob("*/metrics.json")) if mdir.is_dir() else []:
        m = _read(metrics_path)
        name = metrics_path.parent.name
        names.append(_run_label(name, m))
        if m.get("model") == "vae" or "invariance" in m:
            vae_runs.append((name, metrics_path.parent, m))
        if is_roi_experiment(m):
            roi_runs[name] = m
        row = {
            "run": name,
            "model": m.get("model", name),
            "task": m.get("task", ""),
            "parameters": m.get("n_parameters"),
            "device": m.get("device", ""),
            "epochs": m.get("epochs", (m.get("options") or {}).get("epochs")),
        }
        for split in ("train", "test"):
            for k, v in (m.get(split) or {}).items():
                if isinstance(v, int | float):
                    row[f"{split}_{k}"] = v
        if isinstance(m.get("epsilon"), dict):  # the relaxed model's own measured epsilon
            row["measured ε"] = m["epsilon"].get("epsilon")
        rows.append(row)
        log = metrics_path.parent / "log.csv"
        frame = read_table(log) if log.exists() else None
        if frame is not None:
            logs[name] = frame
    if not rows:
        return None, [], []
    frame = pd.DataFrame(rows)
    table = {
        "columns": list(frame.columns),
        "rows": [
            [_cell(None if pd.isna(v) else v) for v in r] for r in frame.itertuples(index=False)
        ],
    }
    fig = training_curves_figure(logs, fig_dir / "training_curves.png", output_dir / "group")
    figs = ([fig] if fig else []) + _vae_emergence_figure(output_dir / "group", fig_dir)
    vae = _vae_section(vae_runs, output_dir / "group")
    roi = _roi_section(roi_runs, fig_dir, output_dir / "group")
    all_figs = figs + (vae["figures"] if vae else []) + (roi["figures"] if roi else [])
    return {"table": table, "figures": figs, "vae": vae, "roi": roi}, all_figs, names


def _gm_difference(output_dir: Path, fig_dir: Path) -> tuple[dict, Figure | None] | None:
    """Table (and slices) of the GM group difference maps, with the planted effect's recovery."""
    from pipeline.reports._group_figures import difference_map_figure

    path = output_dir / "group" / "gm_difference" / "summary.json"
    if not path.exists():
        return None
    summary = _read(path)
    rows, tmaps, centre = [], {}, None
    for name in ("raw", "harmonized"):
        entry = summary.get(name) or {}
        if entry.get("status") != "ok":
            continue
        rec = entry.get("recovery", {})
        centre = entry.get("planted_centre_mm", centre)
        rows.append(
            {
                "maps": name,
                "contrast": entry.get("contrast"),
                "n": " / ".join(f"{k} {v}" for k, v in entry.get("n", {}).items()),
                "peak t": entry.get("peak_t"),
                "peak (mm)": ", ".join(f"{v:.0f}" for v in entry.get("peak_mm", [])),
                "peak to planted (mm)": rec.get("peak_distance_mm"),
                "top-0.5% centroid to planted (mm)": rec.get("centroid_distance_mm"),
                "|t| inside / outside": rec.get("specificity"),
                "top 0.5% inside": rec.get("top_fraction_inside"),
            }
        )
        tmaps[f"{name} GM: {entry.get('contrast')}"] = output_dir / entry["tmap"]
    if not rows:
        return None
    frame = pd.DataFrame(rows).dropna(axis=1, how="all")
    title = "Grey-matter group difference" + (
        " (planted effect: distances to its centre)" if centre is not None else ""
    )
    figure = None
    try:
        figure = difference_map_figure(
            tmaps,
            centre or [0, 0, 0],
            fig_dir / "gm_difference.png",
            output_dir / "group",
            "Welch t-maps of the GM maps before and after harmonization"
            + (", cut through the planted effect's centre." if centre is not None else "."),
        )
    except Exception as exc:  # noqa: BLE001 - a figure problem never costs the table
        logger.warning("GM difference figure skipped: %s", exc)
    return frame_table(frame, title), figure


def _audit_figure(output_dir: Path) -> Figure | None:
    """The audit summary figure, its caption naming the transforms the audited subjects got."""
    group_dir = output_dir / "group"
    png = group_dir / "audit" / "invariance_summary.png"
    if not png.exists():
        return None
    described = []
    for path in sorted(output_dir.glob("sub-*/audit/*_desc-invariance_residuals.tsv")):
        table = read_table(path)
        if table is None or "transform" not in table:
            continue
        cols = [c for c in ("transform", "rotation_deg", "translation_mm", "gain", "gamma",
                            "orientation") if c in table]  # fmt: skip
        for row in table[cols].drop_duplicates("transform").itertuples(index=False):
            r = row._asdict()
            parts = [f"{r['rotation_deg']:.0f}° rotation"] if "rotation_deg" in r else []
            parts += [f"{r['translation_mm']:.0f} mm shift"] if "translation_mm" in r else []
            parts += [f"gain {r['gain']:.2f}"] if "gain" in r else []
            parts += [f"contrast exponent {r['gamma']:.2f}"] if "gamma" in r else []
            if isinstance(r.get("orientation"), str) and r["orientation"]:
                parts.append(f"stored {r['orientation']}")
            subject = path.name.split("_", 1)[0]
            described.append(f"{subject} {r['transform']}: {', '.join(parts)}")
    caption = (
        "Residual of each output against the untransformed run (0: invariant; one dot per "
        "transform, median marked)"
        + (f". Transforms: {'; '.join(described)}." if described else ".")
    )
    src = os.path.relpath(png, group_dir).replace(os.sep, "/")
    return Figure("invariance_summary", src, caption, *_png_size(png))


def build_group_report(output_dir: Path) -> Path:
    """Write ``OUTPUT_DIR/group/report.html`` and its figures from the outputs that exist.

    Parameters
    ----------
    output_dir : Path
        symprep output folder (BIDS-Derivatives).

    Returns
    -------
    Path
        The HTML file.
    """
    output_dir = Path(output_dir)
    group_dir = output_dir / "group"
    fig_dir = group_dir / "figures"
    sites = participants_table(source_bids_dir(output_dir))
    participants, qc_frame, thresholds = _participants(output_dir, sites)
    qc_figs = []
    if not qc_frame.empty:
        fig = qc_distribution_figure(
            qc_frame, thresholds, fig_dir / "registration_qc.png", group_dir
        )
        qc_figs = [fig] if fig else []
    harm, harm_figs, harm_qc = _harmonization(output_dir, sites, fig_dir)
    models, model_figs, model_names = _models(output_dir, fig_dir)
    audit_fig = _audit_figure(output_dir)
    summary = (
        _read(group_dir / "group_summary.json")
        if (group_dir / "group_summary.json").exists()
        else {}
    )
    n = len(participants["rows"])
    n_ok = sum(r[2]["text"] == "ok" for r in participants["rows"])
    pairs = [
        ("Participants", str(n)),
        ("Completed", str(n_ok)),
        ("Failed or missing", str(n - n_ok)),
    ]
    reason = "Harmonization has not run."
    stage = summary.get("stages", {}).get("harmonization", {})
    if stage.get("status") == "skipped":
        reason = f"Harmonization skipped: {stage.get('reason', 'no reason recorded')}."
    methods = Methods()
    group_methods(methods, harm_qc if harm else None, model_names)
    if (output_dir / ".snakemake").exists():
        snakemake_sentence(methods)
    if not methods.sentences:
        methods.add(
            "No group stage has produced results yet; see the subject reports for the "
            "participant-level methods"
        )
    return render_page(
        "group.html.j2",
        group_dir / "report.html",
        qc_figs + harm_figs + model_figs + ([audit_fig] if audit_fig else []),
        title="symprep group report",
        subtitle=str(output_dir),
        sections=SECTIONS,
        summary={"pairs": pairs},
        participants=participants,
        qc_figures=qc_figs,
        harmonization=harm,
        harmonization_reason=reason,
        models=models,
        invariance=audit_tables(output_dir),
        invariance_figure=audit_fig,
        methods=methods,
    )
