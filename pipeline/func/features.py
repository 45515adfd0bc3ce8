"""ROI features of one preprocessed BOLD run: denoised time series, connectivity matrices and
time-shift-invariant spectral features, for every atlas × denoising strategy × measure.

Series are extracted once per atlas from the scaled BOLD and cleaned per strategy (cleaning is
linear, so it commutes with the ROI average). The results are returned as text tables named by
their declared output (:data:`pipeline.outputs.ROI_OUTPUTS`) and its variable entities; the Nipype
interface only writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.func.options import FuncOptions


@dataclass
class FeatureTable:
    """One output table: a file name for the work folder, its text, its declared output."""

    name: str
    text: str
    entities: dict


def strategy_label(name: str) -> str:
    """BIDS ``desc`` label of a denoising strategy (``filt_global`` → ``filtglobal``)."""
    return name.replace("_", "")


def drop_nonsteady(confounds: pd.DataFrame, n_drop: int) -> pd.DataFrame:
    """The confounds of the steady-state volumes: the first ``n_drop`` rows and the
    ``non_steady_state_outlier_XX`` columns removed (the volumes themselves are gone)."""
    if not n_drop:
        return confounds
    kept = confounds.iloc[n_drop:].reset_index(drop=True)
    return kept.loc[:, kept.columns.map(lambda c: not c.startswith("non_steady_state"))]


def roi_features(
    bold: nib.spatialimages.SpatialImage,
    mask: nib.spatialimages.SpatialImage,
    confounds: pd.DataFrame,
    options: FuncOptions,
    n_drop: int = 0,
) -> tuple[list[FeatureTable], nib.Nifti1Image | None]:
    """Every ROI output of a run (see the module docstring).

    Parameters
    ----------
    bold : nibabel image
        Template-space BOLD with the temporal gauge applied (steady-state volumes only).
    mask : nibabel image
        Its brain mask.
    confounds : DataFrame
        The run's confounds, every volume (``n_drop`` leading rows are removed here).
    options : FuncOptions
    n_drop : int, default=0
        Leading non-steady-state volumes that ``bold`` no longer has.

    Returns
    -------
    tables : list of FeatureTable
    denoised : nibabel image or None
        The 4-D BOLD cleaned with the first strategy, when ``options.write_denoised_bold``.
    """
    from pipeline.func.atlases import (
        load_coordinate_atlas,
        load_coordinate_file,
        load_label_atlas,
        roi_timeseries,
    )
    from pipeline.func.connectivity import MEASURES, connectivity, matrix_frame
    from pipeline.func.denoise import denoise, get_preset
    from pipeline.func.qc import format_tsv
    from pipeline.func.spectral import alff, amplitude_spectrum

    img = nib.Nifti1Image(bold.get_fdata(dtype=np.float32), bold.affine, bold.header)  # read once
    tr = float(img.header.get_zooms()[3])
    conf = drop_nonsteady(confounds, n_drop)
    if len(conf) != img.shape[3]:
        raise ValueError(f"{len(conf)} confound rows for {img.shape[3]} volumes")
    atlases = [load_coordinate_atlas(a) for a in options.atlases]
    atlases += [load_coordinate_file(k, v) for k, v in options.coordinate_atlases.items()]
    atlases += [load_label_atlas(k, v) for k, v in options.label_atlases.items()]
    tables: list[FeatureTable] = []
    for atlas in atlases:
        raw = roi_timeseries(img, atlas, mask, radius_mm=options.sphere_radius_mm)
        ok = raw.notna().all().to_numpy()
        for strategy in options.denoise_strategies:
            clean = raw.copy()
            preset = get_preset(strategy, options.motion_regressors)
            if ok.any():
                clean.loc[:, ok] = denoise(raw.loc[:, ok].to_numpy(), conf, tr, preset)
            desc = strategy_label(strategy)
            base = {"atlas": atlas.label, "desc": desc}
            tables.append(
                FeatureTable(
                    f"atlas-{atlas.label}_desc-{desc}_timeseries.tsv",
                    format_tsv(clean),
                    {**base, "output": "roi.timeseries"},
                )
            )
            for kind in options.connectivity:
                mat = connectivity(clean.to_numpy(), kind, z=options.fisher_z)
                meas = MEASURES[kind][1]
                tables.append(
                    FeatureTable(
                        f"atlas-{atlas.label}_meas-{meas}_desc-{desc}_relmat.tsv",
                        format_tsv(matrix_frame(mat, atlas.names), index=True),
                        {**base, "meas": meas, "output": "roi.relmat"},
                    )
                )
        # time-shift-invariant features on motion/CompCor-cleaned, unfiltered series
        cleaned = np.full(raw.shape, np.nan)
        if ok.any():
            cleaned[:, ok] = denoise(raw.loc[:, ok].to_numpy(), conf, tr, "nofilt_noglobal")
        freqs, amp = amplitude_spectrum(np.nan_to_num(cleaned), tr)
        amp[:, ~ok] = np.nan
        spectrum = pd.DataFrame(amp, columns=list(atlas.names))
        spectrum.insert(0, "frequency", freqs)
        tables.append(
            FeatureTable(
                f"atlas-{atlas.label}_desc-amplitude_spectrum.tsv",
                format_tsv(spectrum),
                {"atlas": atlas.label, "output": "roi.spectrum"},
            )
        )
        a, f = alff(np.nan_to_num(cleaned), tr, tuple(options.alff_band))
        a[~ok], f[~ok] = np.nan, np.nan
        feats = pd.DataFrame({"roi": list(atlas.names), "alff": a, "falff": f})
        tables.append(
            FeatureTable(
                f"atlas-{atlas.label}_desc-alff_features.tsv",
                feats.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"),
                {"atlas": atlas.label, "output": "roi.alff"},
            )
        )
    denoised = None
    if options.write_denoised_bold and options.denoise_strategies:
        m = np.asarray(mask.dataobj) > 0
        data = img.get_fdata(dtype=np.float32)
        out = np.zeros_like(data)
        first = get_preset(options.denoise_strategies[0], options.motion_regressors)
        out[m] = denoise(data[m].T, conf, tr, first).T
        denoised = nib.Nifti1Image(out, img.affine, img.header)
    return tables, denoised
