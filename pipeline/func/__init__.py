"""Functional MRI library: BOLD checks, head motion, slice timing, coregistration, one-shot
resampling, confounds, temporal gauge and denoising, ROI time series, connectivity, spectral
features and QC. Knows nothing of Nipype (see :mod:`pipeline.workflows.func`)."""

from pipeline.func.bold import bold_metadata, check_bold, detect_nonsteady
from pipeline.func.confounds import compute_confounds
from pipeline.func.connectivity import connectivity, fisher_z, group_connectivity
from pipeline.func.denoise import PRESETS, denoise, temporal_gauge
from pipeline.func.motion import estimate_motion, register_rigid
from pipeline.func.options import FuncOptions
from pipeline.func.resample import one_shot_resample, template_grid
from pipeline.func.slicetiming import slice_time_correct
from pipeline.func.spectral import alff, amplitude_spectrum

__all__ = [
    "PRESETS",
    "FuncOptions",
    "alff",
    "amplitude_spectrum",
    "bold_metadata",
    "check_bold",
    "compute_confounds",
    "connectivity",
    "denoise",
    "detect_nonsteady",
    "estimate_motion",
    "fisher_z",
    "group_connectivity",
    "one_shot_resample",
    "register_rigid",
    "slice_time_correct",
    "template_grid",
    "temporal_gauge",
]
