"""Options of the gauge stage (the ``gauge:`` section of the configuration)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline._options import StrictOptions


class GaugeOptions(StrictOptions):
    """Group gauge stage: intensity normalization and ComBat harmonization across sites."""

    enabled: bool = Field(True, description="Run the group gauge stage.")
    site_column: str = Field(
        "site",
        min_length=1,
        description="Column of participants.tsv that holds each participant's site or scanner "
        "(e.g. SITE_ID for ABIDE's phenotypic table).",
    )
    method: str = Field(
        "combat",
        description="Harmonizer (a name registered in pipeline.gauge._registry: 'combat').",
    )
    intensity_method: Literal["zscore", "whitestripe", "fcm", "nyul", "none"] = Field(
        "zscore",
        description="Per-image T1w intensity normalization inside the brain mask; 'nyul' fits its "
        "standard histogram on the training subjects only.",
    )
    parametric: bool = Field(
        True,
        description="Parametric empirical Bayes (False: non-parametric, small feature counts).",
    )
    eb: bool = Field(True, description="Empirical-Bayes shrinkage of the site location/scale.")
    mean_only: bool = Field(False, description="Harmonize site locations only (no scaling).")
    ref_site: str | None = Field(
        None, description="Reference site left unchanged (the others are mapped onto it)."
    )
    covariates: list[str] = Field(
        default_factory=lambda: ["age", "sex"],
        description="participants.tsv columns whose effects ComBat preserves (numeric: "
        "continuous; text/category/bool: one-hot).",
    )
    allow_diagnosis_covariate: bool = Field(
        False,
        description="Allow 'diagnosis' among the ComBat covariates (it leaks when class balance "
        "differs by site; a warning is issued).",
    )
    fit_on: str = Field(
        "all",
        description="Subjects the harmonizer is fitted on: 'all', or the name of a boolean "
        "participants column marking the training subjects (e.g. the model stage's folds).",
    )
    min_new_site_subjects: int = Field(
        5, ge=2, description="Fewest subjects of a site unseen in the fit that can be estimated."
    )
    block_features: int | None = Field(
        None, ge=1, description="Features per streamed block (default: 32 MB blocks)."
    )
    features: list[Literal["gm_regional", "gm_voxelwise", "t1w_voxelwise", "fc"]] = Field(
        ["gm_regional", "gm_voxelwise", "t1w_voxelwise", "fc"],
        description="What the group stage harmonizes: regional GM (template-space GM probability "
        "in regional_block_mm cubes), voxel-wise GM maps and voxel-wise template-space T1w "
        "(intensity-normalized with intensity_method first; both written as harmonized NIfTI, "
        "on the dask cluster), and FC edges (Fisher z of the Pearson matrices of "
        "fc_atlas/fc_strategy).",
    )
    regional_block_mm: float = Field(
        8.0, gt=0, description="Cube size of the regional GM features (mm)."
    )
    fc_atlas: str = Field(
        "Power2011", description="Atlas (BIDS label of the relmat files) of the FC edges."
    )
    fc_strategy: Literal[
        "filt_global", "filt_noglobal", "nofilt_global", "nofilt_noglobal", "minimal"
    ] = Field("filt_noglobal", description="Denoising strategy of the FC edges.")
    difference_column: str | None = Field(
        "diagnosis",
        description="participants.tsv column with two groups whose voxel-wise GM difference map "
        "(Welch t) the group stage writes before and after harmonization (null: none).",
    )
    difference_fwhm_mm: float = Field(
        6.0, ge=0, description="Gaussian smoothing (FWHM, mm) of the GM maps of the difference map."
    )
    qc_splits: int = Field(5, ge=2, description="Folds of the site-prediction cross-validation.")
    qc_permutations: int = Field(
        200, ge=0, description="Permutations for the site-prediction p-value."
    )
    qc_max_features: int = Field(
        2000, ge=10, description="Features sampled (seeded) for the site-prediction QC."
    )
