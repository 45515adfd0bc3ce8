"""Per-subject HTML report ``OUTPUT_DIR/sub-X.html`` built from the outputs that exist.

Figures are PNG files in ``OUTPUT_DIR/sub-X/figures/`` linked by relative paths, so the page
works offline and the folder can be moved as a whole. Every section degrades to a short note when
its inputs are missing (stage not run, failed, or not yet written).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.reports import _anat_figures as af
from pipeline.reports import _func_figures as ff
from pipeline.reports._group_data import (
    harmonization_embedding,
    participants_table,
    source_bids_dir,
)
from pipeline.reports._group_figures import embedding_figure
from pipeline.reports._render import Figure, render_page
from pipeline.reports._tables import audit_tables, fmt, model_tables
from pipeline.reports.collect import SubjectOutputs, collect_subject, read_table, sidecar
from pipeline.reports.methods import Methods, anat_methods, func_methods, group_methods

logger = logging.getLogger(__name__)


def _stage_sections() -> list[str]:
    """The report sections of the registered stages (their ``report_section``), in stage order."""
    from pipeline.workflows.stages import STAGES

    return [s.report_section for s in STAGES.values() if s.report_section]


SECTIONS = ["summary", *_stage_sections(), "harmonization", "invariance", "models", "methods"]


def _try(what: str, fn, *args, **kwargs):
    """Run one figure builder; a broken figure is logged and left out, never fatal to the page."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001  (a report must survive odd inputs)
        logger.warning("report figure %s skipped: %s: %s", what, type(exc).__name__, exc)
        return None


def _summary(out: SubjectOutputs, anat_qc: dict[str, Any]) -> dict[str, Any]:
    pairs: list[tuple[str, str]] = [("Subject", out.label)]
    errors, flags = [], []
    stages = {"columns": ["stage", "status", "outputs"], "rows": []}
    if out.status:
        pairs += [
            ("Status", "completed"),
            ("symprep version", str(out.status.get("symprep_version", "?"))),
            ("Seed", str(out.status.get("seed", "?"))),
            ("Run time", f"{out.status.get('seconds', '?')} s"),
        ]
    elif out.failure:
        pairs.append(("Status", "FAILED"))
        errors.append(f"stage {out.failure.get('stage', '?')}: {out.failure.get('error', '')}")
    else:
        pairs.append(("Status", "no status record (participant stage not run or still running)"))
    failed_stage = (out.failure or {}).get("stage")
    func_files = {f"{run}:{k}": v for run, files in out.runs.items() for k, v in files.items()}
    for stage, found in (("anat", out.anat), ("func", func_files)):
        status = "failed" if failed_stage == stage else ("done" if found else "not run")
        stages["rows"].append(
            [
                stage,
                {
                    "text": status,
                    "value": status,
                    "cls": {"done": "ok", "failed": "fail"}.get(status, "absent"),
                },
                str(len(found)),
            ]
        )
    flags += [f"anat: {f}" for f in anat_qc.get("failures", []) or []]
    flags += [f"anat: {f}" for f in anat_qc.get("flags", []) or []]
    if anat_qc.get("passed") is False and not anat_qc.get("failures"):
        flags.append("anat: registration QC failed")
    software = {}
    for path in list(out.anat.values()) + list(out.func.values()):
        software.update(sidecar(path).get("Software", {}))
    versions = {
        "columns": ["software", "version"],
        "rows": [[k, str(v)] for k, v in sorted(software.items())],
    }
    return {
        "pairs": pairs,
        "errors": errors,
        "flags": flags,
        "stages": stages,
        "inputs": [str(p) for p in out.inputs],
        "versions": versions if software else None,
    }


def _anat_section(
    out: SubjectOutputs, fig_dir: Path, html_dir: Path, bids_raw: Path | None, qc: dict[str, Any]
) -> tuple[dict[str, Any] | None, list[Figure]]:
    a, s = out.anat, f"sub-{out.subject}"
    if not a:
        return None, []
    figures: list[Figure] = []
    flicker = None
    if "t1w_preproc" in a and "t1w_mask" in a:
        figures.append(
            _try(
                "mask",
                af.mask_figure,
                a["t1w_preproc"],
                a["t1w_mask"],
                fig_dir / f"{s}_desc-brainmask_T1w.png",
                html_dir,
            )
        )
    probsegs = {
        k.split("_")[1].upper(): a[k]
        for k in ("std_gm_probseg", "std_wm_probseg", "std_csf_probseg")
        if k in a
    }
    if "std_t1w" in a and probsegs:
        figures.append(
            _try(
                "tissues",
                af.tissue_figure,
                a["std_t1w"],
                probsegs,
                fig_dir / f"{s}_desc-tissues_T1w.png",
                html_dir,
            )
        )
    if "std_t1w" in a:
        res = sidecar(a["std_t1w"]).get("Parameters", {}).get("resolution", 2)
        pair = _try("flicker", _flicker, a["std_t1w"], int(res), fig_dir, html_dir, out.subject)
        if pair:
            flicker = {"subject": pair[0], "template": pair[1]}
    if bids_raw is not None and "t1w_preproc" in a and "t1w_mask" in a:
        figures.append(
            _try(
                "bias",
                af.bias_field_figure,
                bids_raw,
                a["t1w_preproc"],
                a["t1w_mask"],
                fig_dir / f"{s}_desc-biasfield_T1w.png",
                html_dir,
            )
        )
    figures = [f for f in figures if f is not None]
    metrics = {
        k: v for k, v in qc.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    table = (
        {"columns": list(metrics), "rows": [[fmt(v) for v in metrics.values()]]}
        if metrics
        else None
    )
    all_figs = figures + ([flicker["subject"], flicker["template"]] if flicker else [])
    return {"figures": figures, "flicker": flicker, "qc": table}, all_figs


def _flicker(std_t1w: Path, res: int, fig_dir: Path, html_dir: Path, subject: str):
    from pipeline.data.templates import load_template
    from pipeline.outputs import TEMPLATE, space_of
    from pipeline.reports import _group_data

    # the template the subject was registered to (its outputs' space entity)
    space = space_of(std_t1w, default=TEMPLATE)
    tpl = _group_data.template(res) if space == TEMPLATE else load_template(res, space)
    return af.flicker_pair(std_t1w, tpl.t1w, tpl.wm, fig_dir, html_dir, subject)


def _func_sections(
    out: SubjectOutputs, fig_dir: Path, html_dir: Path
) -> tuple[list[dict[str, Any]], list[Figure]]:
    """One functional section per run (every session and run the subject has)."""
    sections, figures = [], []
    for label in out.runs:
        section, figs = _func_section(out, label, fig_dir, html_dir)
        if section is not None:
            sections.append({"label": label, **section})
            figures += figs
    return sections, figures


def _func_section(
    out: SubjectOutputs, run: str, fig_dir: Path, html_dir: Path
) -> tuple[dict[str, Any] | None, list[Figure]]:
    f, s = out.runs.get(run, {}), f"sub-{out.subject}_{run}" if run else f"sub-{out.subject}"
    relmats = out.run_relmats.get(run, [])
    if not f and not relmats:
        return None, []
    figures: list[Figure | None] = []
    missing = []
    meta = sidecar(f["confounds"]) if "confounds" in f else {}
    if "boldref" in f:
        figures.append(
            _try(
                "boldref",
                ff.reference_figure,
                f["boldref"],
                f.get("bold_mask"),
                fig_dir / f"{s}_desc-reference_bold.png",
                html_dir,
            )
        )
        if "std_wm_probseg" in out.anat:
            figures.append(
                _try(
                    "coreg",
                    ff.coreg_figure,
                    f["boldref"],
                    out.anat["std_wm_probseg"],
                    fig_dir / f"{s}_desc-coreg_bold.png",
                    html_dir,
                )
            )
    else:
        missing.append("BOLD reference")
    confounds = read_table(f["confounds"]) if "confounds" in f else None
    fd = None
    if confounds is not None:
        fd = (
            confounds["framewise_displacement"].to_numpy(dtype=float)
            if "framewise_displacement" in confounds
            else None
        )
        thr = (
            (meta.get("Thresholds") or {}).get("framewise_displacement")
            if isinstance(meta.get("Thresholds"), dict)
            else None
        )
        figures.append(
            _try(
                "traces",
                ff.traces_figure,
                confounds,
                thr,
                fig_dir / f"{s}_desc-motion_bold.png",
                html_dir,
            )
        )
        figures.append(
            _try(
                "confcorr",
                ff.confound_corr_figure,
                confounds,
                fig_dir / f"{s}_desc-confoundcorr_bold.png",
                html_dir,
            )
        )
    else:
        missing.append("confounds")
    carpet = read_table(f["carpet"]) if "carpet" in f else None
    if carpet is not None:
        figures.append(
            _try(
                "carpet",
                ff.carpet_figure,
                carpet,
                fd,
                fig_dir / f"{s}_desc-carpet_bold.png",
                html_dir,
            )
        )
    else:
        missing.append("carpet plot")
    if "tsnr" in f:
        figures.append(
            _try(
                "tsnr",
                ff.tsnr_figure,
                f["tsnr"],
                f.get("boldref"),
                fig_dir / f"{s}_desc-tsnr_bold.png",
                html_dir,
            )
        )
    else:
        missing.append("tSNR map")
    for i, rel in enumerate(relmats[:3]):
        figures.append(
            _try(
                "relmat", ff.relmat_figure, rel, fig_dir / f"{s}_desc-relmat{i}_bold.png", html_dir
            )
        )
    if not relmats:
        missing.append("connectivity matrix")
    qc = None
    if "qc_json" in f:
        rec = sidecar(f["qc_json"]) or {}
        try:
            from pipeline.io import read_json

            rec = read_json(f["qc_json"])
        except (OSError, ValueError):
            pass
        qc = [
            (k, fmt(v))
            for k, v in rec.items()
            if isinstance(v, int | float | str) and not isinstance(v, bool)
        ]
    figs = [x for x in figures if x is not None]
    return {"figures": figs, "qc": qc, "missing": missing}, figs


def _raw_t1w(out: SubjectOutputs) -> Path | None:
    hits = [
        p
        for p in out.inputs
        if "/anat/" in p.as_posix() and p.name.endswith(("_T1w.nii.gz", "_T1w.nii"))
    ]
    return hits[0] if hits else None


def build_subject_report(output_dir: Path, subject: str, bids_dir: Path | None = None) -> Path:
    """Write ``OUTPUT_DIR/sub-X.html`` and its figures from the outputs that exist.

    Parameters
    ----------
    output_dir : Path
        symprep output folder (BIDS-Derivatives).
    subject : str
        Participant label, with or without ``sub-``.
    bids_dir : Path, optional
        The raw dataset (inputs list, bias-field estimate, site); default the one recorded in
        ``dataset_description.json`` when it still exists.

    Returns
    -------
    Path
        The HTML file.
    """
    output_dir = Path(output_dir)
    bids_dir = Path(bids_dir) if bids_dir is not None else source_bids_dir(output_dir)
    out = collect_subject(output_dir, subject, bids_dir)
    html = output_dir / f"{out.label}.html"
    fig_dir = output_dir / out.label / "figures"
    anat_qc: dict[str, Any] = {}
    if "qc_json" in out.anat:
        from pipeline.io import read_json

        try:
            anat_qc = read_json(out.anat["qc_json"])
        except (OSError, ValueError):
            anat_qc = {}
    stage_content, stage_figs = {}, []
    for section in _stage_sections():
        builder = STAGE_SECTION_BUILDERS.get(section)
        if builder is None:
            raise ValueError(
                f"a registered stage shows report section {section!r}, which "
                "pipeline.reports.subject.STAGE_SECTION_BUILDERS does not build"
            )
        stage_content[section], figs = builder(out, fig_dir, output_dir, anat_qc)
        stage_figs += figs
    anat, funcs = stage_content.get("anatomical"), stage_content.get("functional") or []
    harm, harm_figs = _harmonization_section(out, output_dir, bids_dir)
    methods = Methods()
    anat_meta = sidecar(out.anat["std_t1w"]) if "std_t1w" in out.anat else {}
    if anat_meta:
        anat_methods(methods, anat_meta)
    if funcs and "confounds" in out.func:
        table = read_table(out.func["confounds"])
        func_methods(
            methods,
            sidecar(out.func["confounds"])
            or sidecar(out.func.get("bold_std", out.func["confounds"])),
            list(table.columns) if table is not None else [],
        )
    if harm:
        qc_path = output_dir / "group" / "harmonization" / "qc.json"
        from pipeline.io import read_json

        group_methods(methods, read_json(qc_path) if qc_path.exists() else {}, [])
    if not methods.sentences:
        methods.add("No processing step of this subject has completed yet")
    return render_page(
        "subject.html.j2",
        html,
        stage_figs + harm_figs,
        title=f"symprep report: {out.label}",
        subtitle=str(output_dir),
        sections=SECTIONS,
        summary=_summary(out, anat_qc),
        anat=anat,
        funcs=funcs,
        harmonization=harm,
        invariance=audit_tables(output_dir, out.subject),
        models=model_tables(output_dir, out.subject),
        methods=methods,
    )


#: how each stage's report section (its registry entry's ``report_section``) is built:
#: ``builder(outputs, figure folder, html folder, anatomical QC record) -> (content, figures)``
STAGE_SECTION_BUILDERS = {
    "anatomical": lambda out, fig_dir, html_dir, anat_qc: _anat_section(
        out, fig_dir, html_dir, _raw_t1w(out), _flat_metrics(anat_qc)
    ),
    "functional": lambda out, fig_dir, html_dir, anat_qc: _func_sections(out, fig_dir, html_dir),
}


def _flat_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """QC metrics from a registration QC record (top level or under ``metrics``)."""
    metrics = record.get("metrics", record)
    return metrics if isinstance(metrics, dict) else {}


def _harmonization_section(out: SubjectOutputs, output_dir: Path, bids_dir: Path | None):
    table = _try("embedding", harmonization_embedding, output_dir)
    if table is None or out.subject not in table.index:
        return None, []
    parts = participants_table(bids_dir)
    sites = parts.get("site", None)
    fig = _try(
        "embedding figure",
        embedding_figure,
        table,
        sites,
        output_dir / out.label / "figures" / f"{out.label}_desc-harmonization_features.png",
        output_dir,
        highlight=out.subject,
    )
    return ({"figures": [fig]}, [fig]) if fig else (None, [])


__all__ = ["build_subject_report", "SECTIONS"]
