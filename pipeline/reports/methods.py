"""A methods paragraph built from what actually ran, with the references it cites."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.data.templates import TEMPLATE_NAME

#: reference key → full citation
REFERENCES = {
    "symprep": "symprep: a symmetry-aware neuroimaging preprocessing pipeline (software).",
    "ants": "Avants BB, Epstein CL, Grossman M, Gee JC (2008). Symmetric diffeomorphic image "
    "registration with cross-correlation: evaluating automated labeling of elderly and "
    "neurodegenerative brain. Medical Image Analysis 12(1):26-41.",
    "n4": "Tustison NJ, Avants BB, Cook PA, Zheng Y, Egan A, Yushkevich PA, Gee JC (2010). N4ITK: "
    "improved N3 bias correction. IEEE Transactions on Medical Imaging 29(6):1310-1320.",
    "atropos": "Avants BB, Tustison NJ, Wu J, Cook PA, Gee JC (2011). An open source multivariate "
    "framework for n-tissue segmentation with evaluation on public data. "
    "Neuroinformatics 9(4):381-400.",
    "mni2009": "Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL (2011). "
    "Unbiased average age-appropriate atlases for pediatric studies. NeuroImage 54(1):313-327.",
    "nipype": "Gorgolewski K, Burns CD, Madison C, Clark D, Halchenko YO, Waskom ML, Ghosh SS "
    "(2011). Nipype: a flexible, lightweight and extensible neuroimaging data processing "
    "framework in Python. Frontiers in Neuroinformatics 5:13.",
    "snakemake": "Mölder F, Jablonski KP, Letcher B, et al. (2021). Sustainable data analysis with "
    "Snakemake. F1000Research 10:33.",
    "nilearn": "Abraham A, Pedregosa F, Eickenberg M, et al. (2014). Machine learning for "
    "neuroimaging with scikit-learn. Frontiers in Neuroinformatics 8:14.",
    "power2012": "Power JD, Barnes KA, Snyder AZ, Schlaggar BL, Petersen SE (2012). Spurious but "
    "systematic correlations in functional connectivity MRI networks arise from subject motion. "
    "NeuroImage 59(3):2142-2154.",
    "compcor": "Behzadi Y, Restom K, Liau J, Liu TT (2007). A component based noise correction "
    "method (CompCor) for BOLD and perfusion based fMRI. NeuroImage 37(1):90-101.",
    "combat": "Johnson WE, Li C, Rabinovic A (2007). Adjusting batch effects in microarray "
    "expression data using empirical Bayes methods. Biostatistics 8(1):118-127.",
    "combat_mri": "Fortin JP, Cullen N, Sheline YI, et al. (2018). Harmonization of cortical "
    "thickness measurements across scanners and sites. NeuroImage 167:104-120.",
    "e3nn": "Geiger M, Smidt T (2022). e3nn: Euclidean neural networks. arXiv:2207.09453.",
}


@dataclass
class Methods:
    """Sentences with citation keys, rendered as one paragraph plus a numbered reference list."""

    sentences: list[str] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)

    def add(self, sentence: str, *keys: str) -> None:
        """Append ``sentence`` citing ``keys`` (numbered in order of first citation)."""
        for k in keys:
            if k not in self.cited:
                self.cited.append(k)
        marks = ", ".join(str(self.cited.index(k) + 1) for k in keys)
        self.sentences.append(f"{sentence} [{marks}]." if keys else f"{sentence}.")

    @property
    def paragraph(self) -> str:
        return " ".join(self.sentences)

    @property
    def references(self) -> list[dict[str, str]]:
        return [{"key": k, "text": f"[{i + 1}] {REFERENCES[k]}"} for i, k in enumerate(self.cited)]


def _v(software: dict[str, Any], name: str) -> str:
    return f" {software[name]}" if software.get(name) else ""


def _levels(values: Any) -> str:
    return "x".join(str(v) for v in values) if isinstance(values, list | tuple) else str(values)


def anat_methods(m: Methods, meta: dict[str, Any]) -> None:
    """Describe the anatomical stage from its sidecar (``Software``, ``Parameters``, ``Seed``)."""
    sw, p = meta.get("Software", {}), meta.get("Parameters", {})
    m.add(
        f"Results were produced with symprep{_v(sw, 'symprep')}, whose per-subject graphs run "
        f"in Nipype{_v(sw, 'nipype')}",
        "symprep",
        "nipype",
    )
    text = "The T1-weighted image was validated and reoriented to RAS"
    if p.get("n4", True):
        text += (
            f", corrected for intensity non-uniformity with N4 (shrink factor "
            f"{p.get('n4_shrink_factor', '?')}) as implemented in ANTs (antspyx{_v(sw, 'antspyx')})"
        )
        m.add(text, "n4", "ants")
    else:
        m.add(text + " (no bias-field correction)")
    template = p.get("template", TEMPLATE_NAME)
    start = (
        f"a pose-robust start searching {p.get('pose_n_rotations', '?')} rotations "
        if p.get("pose_search", True)
        else "the header pose as start "
    )
    stages = "rigid, affine" + (
        f" and SyN ({p.get('syn_metric', 'mattes')} metric)" if p.get("syn", True) else ""
    )
    m.add(
        f"It was registered to the {template} template at {p.get('resolution', '?')} mm from "
        f"{start}followed by {stages} stages (rigid iterations "
        f"{_levels(p.get('rigid_iterations', '?'))}, affine {_levels(p.get('affine_iterations', '?'))}"
        + (f", SyN {_levels(p.get('syn_iterations', '?'))}" if p.get("syn", True) else "")
        + f"; random seed {meta.get('Seed', '?')})",
        "ants",
        "mni2009",
    )
    if p.get("tissue_method") == "atropos":
        m.add(
            "Grey matter, white matter and CSF were segmented from the subject's bias-corrected "
            "T1w with Atropos, the template tissue maps serving as spatial priors (prior weight "
            f"{p.get('prior_weight', '?')}), and the brain mask pulled back from the template was "
            "refined with that segmentation",
            "atropos",
        )
    elif p.get("tissue_method"):
        m.add(
            "Tissue probability maps were taken from the template priors mapped to the subject "
            "(no segmentation of the subject's own intensities)"
        )
    m.add(
        "Registration quality was checked with mutual information and rank correlation with the "
        "template, the Dice of the subject's own white matter (segmented from its intensities "
        f"alone) with the template's (minimum {p.get('qc_min_wm_dice', '?')}) and Jacobian "
        f"folding (maximum {p.get('qc_max_folding', '?')})"
    )


def func_methods(m: Methods, meta: dict[str, Any], confound_columns: list[str]) -> None:
    """Describe the functional stage from a sidecar and the confound columns written."""
    p = meta.get("Parameters", {})
    sw = meta.get("Software", {})
    text = "The BOLD run was checked for non-steady-state volumes, corrected for head motion"
    if p.get("hmc_method"):
        text += f" ({p['hmc_method']})"
    if p.get("slice_timing", True):
        text += ", slice-timing corrected"
    text += ", co-registered to the T1w and resampled to template space in one interpolation" + (
        f" at {p['output_resolution']} mm" if p.get("output_resolution") else ""
    )
    m.add(text)
    cites = []
    parts = []
    if "framewise_displacement" in confound_columns:
        parts.append("framewise displacement and DVARS")
        cites.append("power2012")
    if any(c.startswith("a_comp_cor") for c in confound_columns):
        parts.append("anatomical CompCor components")
        cites.append("compcor")
    if "global_signal" in confound_columns:
        parts.append("global, white-matter and CSF signals")
    if parts:
        m.add("Confounds included " + ", ".join(parts), *cites)
    if meta.get("Parameters", {}).get("atlases") or sw.get("nilearn"):
        m.add(
            f"ROI time series and connectivity matrices were computed with nilearn{_v(sw, 'nilearn')}",
            "nilearn",
        )


def group_methods(m: Methods, harmonization: dict[str, Any] | None, models: list[str]) -> None:
    """Describe the group stages that ran."""
    if harmonization:
        opts = harmonization.get("options", {})
        m.add(
            "Site effects in template-space grey-matter probability were removed with ComBat "
            f"({'parametric' if opts.get('parametric', True) else 'non-parametric'} "
            f"{'empirical-Bayes' if opts.get('eb', True) else 'no-shrinkage'} priors) fitted on "
            f"{harmonization.get('n_training_subjects', '?')} training subjects from "
            f"{len(harmonization.get('sites', []))} sites and applied to all "
            f"{harmonization.get('n_subjects', '?')}",
            "combat",
            "combat_mri",
        )
    if models:
        e3nn = any(k in m_ for k in ("steerable", "relaxed") for m_ in models)
        cites = ["e3nn"] if e3nn else []
        m.add(f"Models trained: {', '.join(models)}", *cites)


def snakemake_sentence(m: Methods) -> None:
    """Credit Snakemake for the cross-subject DAG."""
    m.add("The cross-subject steps were scheduled as Snakemake rules", "snakemake")


def boilerplate(config) -> Methods:
    """The methods text of a run with ``config``, before anything ran (``logs/CITATION.md``).

    The participant stages are described from the configuration and the installed software, as
    fMRIPrep's boilerplate is; the per-subject reports describe what actually ran for each subject.
    """
    from pipeline.func.confounds import COMPCOR_KINDS, EXPANDED_COLUMNS
    from pipeline.workflows.anat import software_versions

    m = Methods()
    software = software_versions()
    if config.anat.enabled:
        anat_methods(
            m, {"Software": software, "Parameters": config.anat.model_dump(), "Seed": config.seed}
        )
        if config.func.enabled:
            func_methods(
                m,
                {"Software": software, "Parameters": config.func.model_dump(mode="json")},
                [*EXPANDED_COLUMNS, "framewise_displacement", *(f"{k}_00" for k in COMPCOR_KINDS)],
            )
    return m


def citation_markdown(methods: Methods) -> str:
    """``logs/CITATION.md``: the methods paragraph and its numbered references."""
    refs = "\n".join(f"{r['text']}" for r in methods.references)
    return (
        "# Methods\n\n"
        "This text was generated by symprep from the configuration of the run; it may be copied "
        "into a manuscript unchanged.\n\n"
        f"{methods.paragraph}\n\n## References\n\n{refs}\n"
    )
