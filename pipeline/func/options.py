"""Options of the functional stage (the ``func:`` section of the configuration)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from pipeline._options import StrictOptions


class FuncOptions(StrictOptions):
    """Functional stage: head motion, slice timing, coregistration, one-shot resampling to
    MNI152NLin2009aSym, confounds, denoising, ROI time series, connectivity, spectral features."""

    enabled: bool = Field(
        True, description="Run the functional stage (subjects without BOLD skip it)."
    )
    task: str = Field("rest", description="BIDS task label of the BOLD runs to process.")
    min_volumes: int = Field(
        10, ge=3, description="Fewest volumes (after non-steady-state removal) accepted."
    )
    dummy_scans: int | None = Field(
        None,
        ge=0,
        description="Leading non-steady-state volumes; null: detect them from the global signal.",
    )
    drop_nonsteady: bool = Field(
        False,
        description="Remove non-steady-state volumes from every output, desc-preproc_bold "
        "included (default false, as fMRIPrep: desc-preproc keeps every volume, the non-steady "
        "ones flagged by non_steady_state_outlier_XX confounds and dropped where features are "
        "derived: desc-scaled BOLD, ROI series, connectivity, spectra, tSNR).",
    )
    hmc_method: Literal["gauss-newton", "ants"] = Field(
        "gauss-newton",
        description="Head-motion estimator: fast Gauss-Newton SSD rigid registration, or "
        "ants.registration per volume (slower).",
    )
    hmc_passes: int = Field(
        2, ge=1, le=4, description="Head-motion passes (each further one registers to the mean)."
    )
    slice_timing: bool = Field(
        True, description="Slice-timing correction when SliceTiming is in the sidecar."
    )
    slice_timing_ref: float = Field(
        0.5, ge=0, le=1, description="Reference time as a fraction of the slice-time range."
    )
    coreg_iterations: list[int] = Field(
        [100, 50], description="ANTs iterations per level of the BOLD->T1w rigid MI registration."
    )
    output_resolution: float = Field(
        3.0, gt=0, le=8, description="Voxel size (mm) of the template-space BOLD outputs."
    )
    fd_threshold: float = Field(
        0.5, gt=0, description="Framewise displacement (mm) above which a volume is an outlier."
    )
    dvars_threshold: float = Field(
        1.5, gt=0, description="Standardised DVARS above which a volume is an outlier."
    )
    fd_radius_mm: float = Field(
        50.0, gt=0, description="Head radius (mm) converting rotations to displacements in FD."
    )
    compcor_variance: float = Field(
        0.5,
        gt=0,
        le=1,
        description="CompCor components kept: enough to explain this fraction of the variance "
        "(fMRIPrep's 50%); the denoising presets take the first five of those kept.",
    )
    highpass_period: float = Field(
        128.0, gt=0, description="Cut-off period (s) of the cosine_XX drift regressors."
    )
    scaling: Literal["grand_mean", "psc", "zscore", "none"] = Field(
        "grand_mean",
        description="Temporal gauge of the preprocessed BOLD: grand-mean 1000 (CCS/C-PAC, ABIDE), "
        "percent signal change, per-voxel z-score, or none.",
    )
    denoise_strategies: list[
        Literal["filt_global", "filt_noglobal", "nofilt_global", "nofilt_noglobal", "minimal"]
    ] = Field(
        ["filt_global", "filt_noglobal", "nofilt_global", "nofilt_noglobal"],
        description="Denoising presets: the ABIDE Preprocessed four (24P + aCompCor + trends, "
        "[global signal], [0.01-0.1 Hz band-pass]) and 'minimal' (6P + trends, for short runs).",
    )
    motion_regressors: Literal["24P", "6P"] = Field(
        "24P",
        description="Motion model of the ABIDE presets: 24P (Friston, as ABIDE) or 6P; 24 "
        "regressors overfit short runs (see benchmarks/RESULTS.md, func section).",
    )
    write_denoised_bold: bool = Field(
        False,
        description="Also write the denoised 4-D BOLD of the first strategy (large file).",
    )
    atlases: list[Literal["power2011", "dosenbach2010", "seitzman2018"]] = Field(
        ["power2011", "dosenbach2010", "seitzman2018"],
        description="nilearn's offline coordinate atlases, used as spheres.",
    )
    sphere_radius_mm: float = Field(
        5.0, gt=0, description="Radius (mm) of coordinate-atlas spheres."
    )
    label_atlases: dict[str, Path] = Field(
        {},
        description="Extra labelled NIfTI atlases in template space: BIDS atlas label -> path.",
    )
    coordinate_atlases: dict[str, Path] = Field(
        {},
        description="Extra coordinate atlases: BIDS atlas label -> TSV with x, y, z (MNI mm) "
        "and optional region columns.",
    )
    connectivity: list[Literal["correlation", "partial correlation"]] = Field(
        ["correlation", "partial correlation"],
        description="Participant-level connectivity measures (tangent space is a group measure).",
    )
    fisher_z: bool = Field(True, description="Fisher-z transform correlation matrices.")
    alff_band: tuple[float, float] = Field(
        (0.01, 0.08), description="Frequency band (Hz) of ALFF/fALFF."
    )

    @field_validator("label_atlases", "coordinate_atlases")
    @classmethod
    def _labels(cls, value: dict[str, Path]) -> dict[str, Path]:
        for key in value:
            if not key.isalnum():
                raise ValueError(f"atlas label {key!r} must be letters and digits only (BIDS)")
        return value

    @field_validator("alff_band")
    @classmethod
    def _band(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1]:
            raise ValueError(f"alff_band must be (low, high) with 0 <= low < high, got {value}")
        return value
