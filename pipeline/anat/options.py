"""Options of the anatomical stage (the ``anat:`` section of the configuration)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline._options import StrictOptions
from pipeline.data.templates import TEMPLATE_NAME, check_template


class AnatOptions(StrictOptions):
    """Anatomical stage: pose-robust registration of the T1w to MNI152NLin2009aSym."""

    enabled: bool = Field(True, description="Run the anatomical stage.")
    template: str = Field(
        TEMPLATE_NAME,
        pattern=r"^[A-Za-z0-9]+$",
        description="Target template: the MNI152 2009a symmetric template nilearn ships, or any "
        "template TemplateFlow's cache ($TEMPLATEFLOW_HOME) holds (never downloaded).",
    )
    resolution: Literal[1, 2] = Field(
        2,
        description="Template resolution (TemplateFlow's res- index; 1 and 2 mm for the shipped "
        "template) of the outputs in template space.",
    )
    registration_voxel_mm: float | None = Field(
        None,
        gt=0,
        description="Voxel size (mm) of the grid registration runs on; null: the template resolution. "
        "Coarser is faster; outputs are always written on the template grid.",
    )
    n4: bool = Field(True, description="Run N4 bias-field correction before registration.")
    n4_shrink_factor: int = Field(4, ge=1, le=8, description="N4 shrink factor (higher is faster).")
    pose_search: bool = Field(
        True,
        description="Search the whole rotation group for the initial pose (off: start from the header pose).",
    )
    pose_n_rotations: int = Field(
        1000,
        ge=24,
        description="Rotations in the super-Fibonacci cover of SO(3) scored by the pose search.",
    )
    pose_coarse_mm: float = Field(
        8.0, gt=0, description="Voxel size (mm) of the global pose search grid."
    )
    pose_fine_mm: float = Field(
        4.0, gt=0, description="Voxel size (mm) of the final pose refinement grid."
    )
    pose_n_refine: int = Field(
        3, ge=1, description="Distinct best pose candidates refined locally."
    )
    rigid_iterations: list[int] = Field([50, 25], description="ANTs rigid iterations per level.")
    rigid_shrink_factors: list[int] = Field(
        [4, 2], description="ANTs rigid shrink factors per level."
    )
    rigid_smoothing_sigmas: list[float] = Field(
        [2.0, 1.0], description="ANTs rigid smoothing (voxels) per level."
    )
    affine_iterations: list[int] = Field(
        [100, 50, 10], description="ANTs affine iterations per level."
    )
    affine_shrink_factors: list[int] = Field(
        [4, 2, 1], description="ANTs affine shrink factors per level."
    )
    affine_smoothing_sigmas: list[float] = Field(
        [2.0, 1.0, 0.0], description="ANTs affine smoothing (voxels) per level."
    )
    linear_sampling_rate: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Fraction of voxels sampled by the rigid/affine mutual-information metric.",
    )
    syn: bool = Field(True, description="Run the nonlinear SyN stage after the affine stage.")
    syn_iterations: list[int] = Field(
        [70, 40, 10],
        description="ANTs SyN iterations per level (shrink 4, 2, 1). ANTs' own default is "
        "40x20x0; on anatomy unlike the template 70x40x10 lowered symprep's median error from "
        "1.48 to below ANTs SyN's (benchmarks/RESULTS.md), at about twice the time.",
    )
    syn_metric: Literal["mattes", "CC"] = Field("mattes", description="ANTs SyN similarity metric.")
    stage_tolerance: float = Field(
        0.01,
        ge=0,
        description="A registration stage is rejected (previous result kept) when it lowers the mutual "
        "information with the template by more than this (nats).",
    )
    ants_threads: int | None = Field(
        1,
        ge=1,
        description="ITK threads of the registration (run in a child process so that the setting "
        "takes effect). 1 makes outputs bit-identical for a given seed; null: ITK's default "
        "(all cores, faster, not bit-reproducible).",
    )
    tissue_method: Literal["atropos", "priors"] = Field(
        "atropos",
        description="GM/WM/CSF maps: 'atropos' segments the subject's N4-corrected T1w with the "
        "template maps as spatial priors (as antsCorticalThickness and sMRIPrep do); 'priors' is a "
        "fallback that only pulls the template maps back (no subject information; the sidecars say so).",
    )
    prior_weight: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Atropos prior weight of the template tissue maps (0: the subject's intensities "
        "only). antsCorticalThickness uses 0.25; measured here, 0.25 kept a ball of grey matter "
        "replaced by CSF at GM probability 0.72 (0.71 before), 0.1 brought it to 0.31.",
    )
    mask_margin_mm: float = Field(
        4.0,
        ge=0,
        description="Dilation of the pulled-back template mask before the subject's own "
        "segmentation refines it (mm).",
    )
    write_modulated_gm: bool = Field(
        False,
        description="Also write the Jacobian-modulated template-space GM map (desc-modulated, for VBM).",
    )
    qc_min_mi: float = Field(
        0.35,
        description="QC: minimum mutual information (nats) with the template inside its brain mask.",
    )
    qc_min_rank_corr: float = Field(
        0.6, description="QC: minimum Spearman correlation with the template inside its brain mask."
    )
    qc_min_wm_dice: float = Field(
        0.62,
        description="QC: minimum Dice of the subject's own white matter (segmented from its "
        "intensities, no priors, warped to the template) with the template's white matter.",
    )
    qc_max_folding: float = Field(
        0.001,
        ge=0,
        description="QC: maximum fraction of brain voxels whose Jacobian determinant is <= 0.",
    )
    exclude_failed_qc: bool = Field(
        True, description="Leave subjects that fail registration QC out of the group stages."
    )

    @model_validator(mode="after")
    def _template_is_available(self) -> AnatOptions:
        """A template that cannot be loaded offline is refused with the file it lacks."""
        check_template(self.template, self.resolution)
        return self
