"""Thin Nipype interfaces around :mod:`pipeline.func` (one library call each).

Each interface loads its inputs, calls the library and writes its results into the node's working
directory. Only :class:`FuncDataSink` writes into the output dataset (atomically, names from
:func:`pipeline.bids_names.derivative_path`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from pipeline.io import atomic_path, save_image, write_json, write_text


def _out(runtime, name: str) -> Path:
    return Path(runtime.cwd) / name


def _image(data: np.ndarray, affine: np.ndarray, tr: float | None = None) -> nib.Nifti1Image:
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if tr is not None and img.ndim == 4:
        img.header.set_zooms((*img.header.get_zooms()[:3], tr))
    return img


def _load_meta(path: str) -> dict:
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- validation
class _ValidateBoldInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="raw BOLD run")
    metadata = traits.Dict(mandatory=True, desc="merged sidecar metadata")
    min_volumes = traits.Int(10, usedefault=True)
    dummy_scans = traits.Either(None, traits.Int, usedefault=True, desc="None: detect")
    drop_nonsteady = traits.Bool(True, usedefault=True)


class _ValidateBoldOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="float32 BOLD (non-steady-state volumes dropped if asked)")
    out_meta = File(exists=True, desc="JSON: TR, slice times, slice axis, non-steady volumes")
    n_nonsteady = traits.Int(desc="non-steady-state volumes detected")
    n_flagged = traits.Int(desc="non-steady-state volumes still in out_file")


class ValidateBold(SimpleInterface):
    """Validate a BOLD run, detect (and drop) its non-steady-state volumes."""

    input_spec = _ValidateBoldInputSpec
    output_spec = _ValidateBoldOutputSpec

    def _run_interface(self, runtime):
        from pipeline.errors import ImageError
        from pipeline.func.bold import check_bold, detect_nonsteady, slice_axis

        meta = dict(self.inputs.metadata)
        img, tr = check_bold(self.inputs.in_file, meta, min_volumes=1)
        data = np.asarray(img.dataobj, dtype=np.float32)
        dummies = self.inputs.dummy_scans
        n_dummy = detect_nonsteady(data) if dummies is None else int(dummies)
        keep = data.shape[3] - n_dummy
        if keep < self.inputs.min_volumes:
            raise ImageError(
                f"BOLD run has {keep} steady-state volumes after {n_dummy} non-steady-state ones, "
                f"at least {self.inputs.min_volumes} are needed",
                self.inputs.in_file,
            )
        drop = n_dummy if self.inputs.drop_nonsteady else 0
        out = _image(data[..., drop:], img.affine, tr)
        out.header.set_dim_info(slice=slice_axis(img, meta))
        self._results["out_file"] = str(save_image(out, _out(runtime, "bold_valid.nii")))
        record = {
            "RepetitionTime": tr,
            "SliceTiming": meta.get("SliceTiming"),
            "SliceAxis": slice_axis(img, meta),
            "NonSteadyStateVolumes": n_dummy,
            "NumberOfVolumesDiscardedByUser": drop,
            "VolumesIn": int(data.shape[3]),
        }
        self._results["out_meta"] = str(write_json(_out(runtime, "bold_meta.json"), record))
        self._results["n_nonsteady"] = n_dummy
        self._results["n_flagged"] = n_dummy - drop
        return runtime


# --------------------------------------------------------------------------- head motion
class _HeadMotionInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    n_flagged = traits.Int(0, usedefault=True, desc="leading volumes to leave out of the reference")
    method = traits.Enum("gauss-newton", "ants", usedefault=True)
    passes = traits.Int(2, usedefault=True)


class _HeadMotionOutputSpec(TraitedSpec):
    params = File(exists=True, desc="TSV of the six motion parameters per volume")
    matrices = File(exists=True, desc=".npy (T, 4, 4): reference -> volume point maps (RAS)")
    reference = File(exists=True, desc="BOLD reference (mean of realigned volumes)")


class HeadMotion(SimpleInterface):
    """Rigid head-motion estimation (:func:`pipeline.func.motion.estimate_motion`)."""

    input_spec = _HeadMotionInputSpec
    output_spec = _HeadMotionOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.motion import estimate_motion, matrices_to_frame, register_rigid

        img = nib.load(self.inputs.in_file)
        data = np.asarray(img.dataobj, dtype=np.float32)
        skip = self.inputs.n_flagged
        est = estimate_motion(
            data[..., skip:], img.affine, method=self.inputs.method, n_passes=self.inputs.passes
        )
        matrices = np.concatenate([np.tile(np.eye(4), (skip, 1, 1)), est.matrices])
        for t in range(skip):  # flagged volumes: registered to the reference, not used for it
            matrices[t] = register_rigid(
                est.reference, data[..., t], img.affine, init=matrices[skip]
            )
        np.save(_out(runtime, "hmc.npy"), matrices)
        self._results["matrices"] = str(_out(runtime, "hmc.npy"))
        self._results["params"] = str(
            write_text(
                _out(runtime, "motion.tsv"),
                matrices_to_frame(matrices).to_csv(sep="\t", index=False, float_format="%.8g"),
            )
        )
        ref = _image(est.reference.astype(np.float32), img.affine)
        self._results["reference"] = str(save_image(ref, _out(runtime, "boldref.nii.gz")))
        return runtime


# --------------------------------------------------------------------------- slice timing
class _STCInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    meta = File(exists=True, mandatory=True, desc="ValidateBold's JSON")
    enabled = traits.Bool(True, usedefault=True)
    ref = traits.Float(0.5, usedefault=True)


class _STCOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    applied = traits.Bool()
    out_meta = File(
        exists=True, desc="run metadata for the outputs (SliceTimingCorrected, StartTime)"
    )


class SliceTimingCorrection(SimpleInterface):
    """Slice-timing correction; passes the run through (logged) when it cannot be done."""

    input_spec = _STCInputSpec
    output_spec = _STCOutputSpec

    def _run_interface(self, runtime):
        import logging

        from pipeline.func.slicetiming import reference_time, slice_time_correct

        log = logging.getLogger("pipeline.func")
        meta = _load_meta(self.inputs.meta)
        img = nib.load(self.inputs.in_file)
        times = meta.get("SliceTiming")
        reason = None
        if not self.inputs.enabled:
            reason = "disabled in the configuration"
        elif not times:
            reason = "no SliceTiming in the sidecar"
        elif img.shape[3] < 5:
            reason = f"only {img.shape[3]} volumes"
        elif len(times) != img.shape[meta["SliceAxis"]]:
            reason = (
                f"SliceTiming has {len(times)} entries for {img.shape[meta['SliceAxis']]} slices"
            )
        elif np.ptp(times) == 0:
            reason = "all slices acquired at the same time"
        record = {k: v for k, v in meta.items() if k not in ("SliceAxis", "SliceTiming")}
        if reason:
            log.info("slice-timing correction skipped: %s", reason)
            self._results["out_file"] = self.inputs.in_file
            self._results["applied"] = False
            record.update({"SliceTimingCorrected": False, "SliceTimingSkipped": reason})
            if times:
                record["SliceTiming"] = times
            self._results["out_meta"] = str(write_json(_out(runtime, "run_meta.json"), record))
            return runtime
        data = slice_time_correct(
            np.asarray(img.dataobj, dtype=np.float32),
            times,
            meta["RepetitionTime"],
            axis=meta["SliceAxis"],
            ref=self.inputs.ref,
        )
        out = _image(data, img.affine, meta["RepetitionTime"])
        self._results["out_file"] = str(save_image(out, _out(runtime, "bold_stc.nii")))
        self._results["applied"] = True
        record.update(
            {"SliceTimingCorrected": True, "StartTime": reference_time(times, self.inputs.ref)}
        )
        self._results["out_meta"] = str(write_json(_out(runtime, "run_meta.json"), record))
        return runtime


# --------------------------------------------------------------------------- coregistration
class _CoregInputSpec(BaseInterfaceInputSpec):
    bold_ref = File(exists=True, mandatory=True)
    t1w = File(exists=True, mandatory=True)
    t1w_mask = File(exists=True, mandatory=True)
    iterations = traits.List(traits.Int, [100, 50], usedefault=True)
    seed = traits.Int(0, usedefault=True)


class _CoregOutputSpec(TraitedSpec):
    matrix = File(exists=True, desc=".npy 4x4: T1w -> BOLD reference points (RAS)")
    itk = File(exists=True, desc="ITK text transform (from-boldref to-T1w, ANTs convention)")
    out_report = File(exists=True, desc="JSON QC record")


class Coregister(SimpleInterface):
    """BOLD→T1w rigid MI registration (:func:`pipeline.func.coreg.coregister`)."""

    input_spec = _CoregInputSpec
    output_spec = _CoregOutputSpec

    def _run_interface(self, runtime):
        from pipeline.anat._antsio import write_affine
        from pipeline.func.coreg import coregister

        result = coregister(
            nib.load(self.inputs.bold_ref),
            nib.load(self.inputs.t1w),
            nib.load(self.inputs.t1w_mask),
            iterations=self.inputs.iterations,
            seed=self.inputs.seed,
        )
        np.save(_out(runtime, "coreg.npy"), result.matrix)
        self._results["matrix"] = str(_out(runtime, "coreg.npy"))
        self._results["itk"] = str(write_affine(result.matrix, _out(runtime, "coreg.txt")))
        self._results["out_report"] = str(write_json(_out(runtime, "coreg.json"), result.as_dict()))
        return runtime


# --------------------------------------------------------------------------- resampling
class _ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="(slice-timing-corrected) BOLD")
    motion = File(exists=True, mandatory=True)
    coreg = File(exists=True, mandatory=True)
    anat2std_xfm = traits.List(File(exists=True), mandatory=True)
    std_mask = File(exists=True, mandatory=True, desc="template-space brain mask (anat)")
    resolution = traits.Float(3.0, usedefault=True)


class _ResampleOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_mask = File(exists=True, desc="BOLD brain mask on the output grid")
    out_ref = File(exists=True, desc="temporal mean on the output grid")


class OneShotResample(SimpleInterface):
    """Motion + coregistration + T1w→template in one interpolation (:mod:`pipeline.func.resample`)."""

    input_spec = _ResampleInputSpec
    output_spec = _ResampleOutputSpec

    def _run_interface(self, runtime):
        from scipy import ndimage

        from pipeline.func.motion import foreground
        from pipeline.func.resample import one_shot_resample, resample_to_grid, template_grid

        grid = template_grid(self.inputs.resolution)
        brain = resample_to_grid(nib.load(self.inputs.std_mask), grid).get_fdata() > 0.5
        select = ndimage.binary_dilation(brain, iterations=2)
        bold = nib.load(self.inputs.in_file)
        img, coverage = one_shot_resample(
            bold,
            grid,
            motion=np.load(self.inputs.motion),
            coreg=np.load(self.inputs.coreg),
            anat_to_template=list(self.inputs.anat2std_xfm),
            mask=select,
        )
        data = img.get_fdata(dtype=np.float32)
        mean = data.mean(axis=3)
        signal = foreground(mean, fraction=0.1) if mean.max() > 0 else np.zeros_like(brain)
        mask = brain & coverage & signal
        tr = float(bold.header.get_zooms()[3])
        self._results["out_file"] = str(
            save_image(
                _image(data * mask[..., None], grid.affine, tr), _out(runtime, "bold_std.nii")
            )
        )
        self._results["out_mask"] = str(
            save_image(_image(mask.astype(np.uint8), grid.affine), _out(runtime, "mask_std.nii.gz"))
        )
        self._results["out_ref"] = str(
            save_image(_image(mean * mask, grid.affine), _out(runtime, "boldref_std.nii.gz"))
        )
        return runtime


# --------------------------------------------------------------------------- confounds
class _ConfoundsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space BOLD")
    mask = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True, desc="template-space WM probability")
    csf = File(exists=True, mandatory=True, desc="template-space CSF probability")
    params = File(exists=True, mandatory=True)
    n_flagged = traits.Int(0, usedefault=True)
    options = traits.Dict(desc="FuncOptions as a dict")


class _ConfoundsOutputSpec(TraitedSpec):
    out_tsv = File(exists=True)
    out_json = File(exists=True)


def _tissue_masks(mask: np.ndarray, wm_img: str, csf_img: str, grid) -> tuple[np.ndarray, ...]:
    """WM and CSF voxels of the mask: probability ≥ 0.9 (relaxed to 0.7/0.5 when too few)."""
    from pipeline.func.resample import resample_to_grid

    wm = resample_to_grid(nib.load(wm_img), grid).get_fdata()[mask]
    csf = resample_to_grid(nib.load(csf_img), grid).get_fdata()[mask]
    out = []
    for prob in (wm, csf):
        for thr in (0.9, 0.7, 0.5):
            sel = prob >= thr
            if sel.sum() >= 10:
                break
        out.append(sel)
    return tuple(out)


class Confounds(SimpleInterface):
    """fMRIPrep-style confounds (:func:`pipeline.func.confounds.compute_confounds`)."""

    input_spec = _ConfoundsInputSpec
    output_spec = _ConfoundsOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.confounds import compute_confounds, write_confounds_tsv
        from pipeline.func.options import FuncOptions

        opts = (
            FuncOptions(**self.inputs.options) if isdefined(self.inputs.options) else FuncOptions()
        )
        img = nib.load(self.inputs.in_file)
        mask_img = nib.load(self.inputs.mask)
        mask = np.asarray(mask_img.dataobj) > 0
        voxels = img.get_fdata(dtype=np.float32)[mask]
        wm, csf = _tissue_masks(mask, self.inputs.wm, self.inputs.csf, mask_img)
        table, meta = compute_confounds(
            voxels,
            pd.read_csv(self.inputs.params, sep="\t"),
            float(img.header.get_zooms()[3]),
            wm=wm,
            csf=csf,
            n_nonsteady=self.inputs.n_flagged,
            fd_threshold=opts.fd_threshold,
            dvars_threshold=opts.dvars_threshold,
            highpass_period=opts.highpass_period,
            fd_radius_mm=opts.fd_radius_mm,
        )
        self._results["out_tsv"] = str(
            write_text(_out(runtime, "confounds.tsv"), write_confounds_tsv(table))
        )
        self._results["out_json"] = str(write_json(_out(runtime, "confounds.json"), meta))
        return runtime


# --------------------------------------------------------------------------- temporal gauge
class _GaugeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)
    mask = File(exists=True, mandatory=True)
    method = traits.Enum("grand_mean", "psc", "zscore", "none", usedefault=True)


class _GaugeOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    factor = traits.Float()


class TemporalGauge(SimpleInterface):
    """Grand-mean scaling / PSC / z-score (:func:`pipeline.func.denoise.temporal_gauge`)."""

    input_spec = _GaugeInputSpec
    output_spec = _GaugeOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.denoise import temporal_gauge

        img = nib.load(self.inputs.in_file)
        mask = np.asarray(nib.load(self.inputs.mask).dataobj) > 0
        data = img.get_fdata(dtype=np.float32)
        scaled, factor = temporal_gauge(data[mask], self.inputs.method)
        out = np.zeros_like(data)
        out[mask] = scaled
        tr = float(img.header.get_zooms()[3])
        self._results["out_file"] = str(
            save_image(_image(out, img.affine, tr), _out(runtime, "bold_scaled.nii"))
        )
        self._results["factor"] = float(factor)
        return runtime


# --------------------------------------------------------------------------- ROIs and connectivity
class _RoiInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space, scaled BOLD")
    mask = File(exists=True, mandatory=True)
    confounds = File(exists=True, mandatory=True)
    options = traits.Dict(desc="FuncOptions as a dict")


class _RoiOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True))
    entities = traits.List(traits.Dict, desc="BIDS entities of each output file")
    denoised_bold = File(desc="denoised 4-D BOLD of the first strategy (when asked)")


def _strategy_label(name: str) -> str:
    return name.replace("_", "")


class RoiConnectivity(SimpleInterface):
    """Denoised ROI series, connectivity matrices and spectral features for every atlas × strategy.

    Series are extracted once per atlas from the scaled BOLD and cleaned per strategy (cleaning is
    linear, so it commutes with the ROI average).
    """

    input_spec = _RoiInputSpec
    output_spec = _RoiOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.atlases import (
            load_coordinate_atlas,
            load_coordinate_file,
            load_label_atlas,
            roi_timeseries,
        )
        from pipeline.func.connectivity import MEASURES, connectivity, matrix_frame
        from pipeline.func.denoise import denoise, get_preset
        from pipeline.func.options import FuncOptions
        from pipeline.func.qc import format_tsv
        from pipeline.func.spectral import alff, amplitude_spectrum

        opts = (
            FuncOptions(**self.inputs.options) if isdefined(self.inputs.options) else FuncOptions()
        )
        loaded = nib.load(self.inputs.in_file)  # read once, used by every atlas
        img = nib.Nifti1Image(loaded.get_fdata(dtype=np.float32), loaded.affine, loaded.header)
        mask = nib.load(self.inputs.mask)
        tr = float(img.header.get_zooms()[3])
        conf = pd.read_csv(self.inputs.confounds, sep="\t", na_values="n/a")
        atlases = [load_coordinate_atlas(a) for a in opts.atlases]
        atlases += [load_coordinate_file(k, v) for k, v in opts.coordinate_atlases.items()]
        atlases += [load_label_atlas(k, v) for k, v in opts.label_atlases.items()]
        files, ents = [], []

        def emit(name: str, text: str, entities: dict) -> None:
            files.append(str(write_text(_out(runtime, name), text)))
            ents.append(entities)

        for atlas in atlases:
            raw = roi_timeseries(img, atlas, mask, radius_mm=opts.sphere_radius_mm)
            for strategy in opts.denoise_strategies:
                ok = raw.notna().all().to_numpy()
                clean = raw.copy()
                preset = get_preset(strategy, opts.motion_regressors)
                if ok.any():
                    clean.loc[:, ok] = denoise(raw.loc[:, ok].to_numpy(), conf, tr, preset)
                desc = _strategy_label(strategy)
                base = {"atlas": atlas.label, "desc": desc}
                emit(
                    f"atlas-{atlas.label}_desc-{desc}_timeseries.tsv",
                    format_tsv(clean),
                    {**base, "suffix": "timeseries"},
                )
                for kind in opts.connectivity:
                    mat = connectivity(clean.to_numpy(), kind, z=opts.fisher_z)
                    meas = MEASURES[kind][1]
                    emit(
                        f"atlas-{atlas.label}_meas-{meas}_desc-{desc}_relmat.tsv",
                        format_tsv(matrix_frame(mat, atlas.names), index=True),
                        {**base, "meas": meas, "suffix": "relmat"},
                    )
            # time-shift-invariant features on motion/CompCor-cleaned, unfiltered series
            ok = raw.notna().all().to_numpy()
            cleaned = np.full(raw.shape, np.nan)
            if ok.any():
                cleaned[:, ok] = denoise(raw.loc[:, ok].to_numpy(), conf, tr, "nofilt_noglobal")
            freqs, amp = amplitude_spectrum(np.nan_to_num(cleaned), tr)
            amp[:, ~ok] = np.nan
            spectrum = pd.DataFrame(amp, columns=list(atlas.names))
            spectrum.insert(0, "frequency", freqs)
            emit(
                f"atlas-{atlas.label}_desc-amplitude_spectrum.tsv",
                format_tsv(spectrum),
                {"atlas": atlas.label, "desc": "amplitude", "suffix": "spectrum"},
            )
            a, f = alff(np.nan_to_num(cleaned), tr, tuple(opts.alff_band))
            a[~ok], f[~ok] = np.nan, np.nan
            feats = pd.DataFrame({"roi": list(atlas.names), "alff": a, "falff": f})
            emit(
                f"atlas-{atlas.label}_desc-alff_features.tsv",
                feats.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"),
                {"atlas": atlas.label, "desc": "alff", "suffix": "features"},
            )
        if opts.write_denoised_bold and opts.denoise_strategies:
            m = np.asarray(mask.dataobj) > 0
            data = img.get_fdata(dtype=np.float32)
            out = np.zeros_like(data)
            first = get_preset(opts.denoise_strategies[0], opts.motion_regressors)
            out[m] = denoise(data[m].T, conf, tr, first).T
            self._results["denoised_bold"] = str(
                save_image(_image(out, img.affine, tr), _out(runtime, "bold_denoised.nii"))
            )
        self._results["out_files"] = files
        self._results["entities"] = ents
        return runtime


# --------------------------------------------------------------------------- QC
class _BoldQCInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space BOLD (before the gauge)")
    mask = File(exists=True, mandatory=True)
    confounds = File(exists=True, mandatory=True)
    gm = File(exists=True, mandatory=True)
    wm = File(exists=True, mandatory=True)
    csf = File(exists=True, mandatory=True)
    coreg_report = File(exists=True, mandatory=True)
    meta = File(exists=True, mandatory=True, desc="ValidateBold's JSON")
    stc_applied = traits.Bool(False, usedefault=True)
    subject = traits.Str(mandatory=True)


class _BoldQCOutputSpec(TraitedSpec):
    tsnr = File(exists=True)
    carpet = File(exists=True)
    out_tsv = File(exists=True)
    out_json = File(exists=True)


class BoldQC(SimpleInterface):
    """tSNR map, carpet-plot data and the QC record (:mod:`pipeline.func.qc`)."""

    input_spec = _BoldQCInputSpec
    output_spec = _BoldQCOutputSpec

    def _run_interface(self, runtime):
        from pipeline.func.qc import carpet, format_tsv, qc_summary, tsnr
        from pipeline.func.resample import resample_to_grid

        img = nib.load(self.inputs.in_file)
        mask_img = nib.load(self.inputs.mask)
        mask = np.asarray(mask_img.dataobj) > 0
        voxels = img.get_fdata(dtype=np.float32)[mask]
        snr = tsnr(voxels)
        snr_map = np.zeros(mask.shape, np.float32)
        snr_map[mask] = snr
        self._results["tsnr"] = str(
            save_image(_image(snr_map, img.affine), _out(runtime, "tsnr.nii.gz"))
        )
        probs = np.stack(
            [
                resample_to_grid(nib.load(getattr(self.inputs, k)), mask_img).get_fdata()[mask]
                for k in ("gm", "wm", "csf")
            ]
        )
        tissue = np.array(["gm", "wm", "csf"])[np.argmax(probs, axis=0)]
        self._results["carpet"] = str(
            write_text(
                _out(runtime, "carpet.tsv"),
                format_tsv(carpet(voxels, tissue), digits=4),
            )
        )
        conf = pd.read_csv(self.inputs.confounds, sep="\t", na_values="n/a")
        meta = _load_meta(self.inputs.meta)
        coreg = _load_meta(self.inputs.coreg_report)
        record = {
            "subject": self.inputs.subject,
            **qc_summary(
                conf,
                snr,
                meta["NonSteadyStateVolumes"],
                {
                    "coreg_mi": coreg["coreg_mi"],
                    "coreg_mi_before": coreg["coreg_mi_before"],
                    "coreg_dice": coreg["coreg_dice"],
                    "coreg_accepted": coreg["coreg_accepted"],
                    "slice_timing_corrected": bool(self.inputs.stc_applied),
                    "mask_voxels": int(mask.sum()),
                },
            ),
        }
        keys = [k for k in record if k != "subject"]
        header = "\t".join(["participant_id", *keys])
        row = "\t".join([f"sub-{self.inputs.subject}", *(f"{record[k]}" for k in keys)])
        self._results["out_tsv"] = str(
            write_text(_out(runtime, "qc.tsv"), header + "\n" + row + "\n")
        )
        self._results["out_json"] = str(write_json(_out(runtime, "qc.json"), record))
        return runtime


# --------------------------------------------------------------------------- sink
class _FuncSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    subject = traits.Str(mandatory=True)
    in_file = File(exists=True, mandatory=True)
    entities = traits.Dict(mandatory=True, desc="BIDS entities, 'suffix' included")
    meta_dict = traits.Dict(desc="JSON sidecar content")
    meta_file = File(exists=True, desc="JSON whose content is merged into the sidecar")


class _FuncSinkOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    out_meta = File(desc="the JSON sidecar")


class FuncDataSink(SimpleInterface):
    """Copy a result into ``sub-X/func/`` under its BIDS name (``task`` included), with a sidecar.

    Unlike the anatomical sink, the entities come as one dictionary, so a ``MapNode`` can sink a
    list of outputs whose number depends on the configuration (atlases × strategies × measures).
    """

    input_spec = _FuncSinkInputSpec
    output_spec = _FuncSinkOutputSpec
    _always_run = True  # a cached sink would not rewrite a deleted output

    def _run_interface(self, runtime):
        dest, meta_path = self._sink()
        self._results["out_file"] = dest
        if meta_path is not None:
            self._results["out_meta"] = meta_path
        return runtime

    def _sink(self) -> tuple[str, str | None]:
        from pipeline.bids_names import derivative_path
        from pipeline.workflows.interfaces import _extension

        ents = dict(self.inputs.entities)
        suffix = ents.pop("suffix")
        ext = _extension(self.inputs.in_file)
        compress = ext == ".nii"  # work-dir images are uncompressed (fast); outputs are .nii.gz
        if compress:
            ext = ".nii.gz"
        dest = derivative_path(
            self.inputs.base_directory,
            self.inputs.subject,
            "func",
            suffix=suffix,
            extension=ext,
            **ents,
        )
        if compress:
            save_image(nib.load(self.inputs.in_file), dest)
        else:
            with atomic_path(dest) as tmp:
                shutil.copyfile(self.inputs.in_file, tmp)
        if ext == ".json":
            return str(dest), None
        meta = dict(self.inputs.meta_dict) if isdefined(self.inputs.meta_dict) else {}
        if isdefined(self.inputs.meta_file):
            meta.update(_load_meta(self.inputs.meta_file))
        sidecar = dest.with_name(dest.name[: -len(ext)] + ".json")
        return str(dest), str(write_json(sidecar, meta))


class _FuncSinkManyInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    subject = traits.Str(mandatory=True)
    in_files = traits.List(File(exists=True), mandatory=True)
    entities = traits.List(traits.Dict, mandatory=True, desc="BIDS entities of each file")
    meta_dict = traits.Dict(desc="JSON sidecar content (the same for every file)")


class _FuncSinkManyOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True))


class FuncDataSinkMany(SimpleInterface):
    """:class:`FuncDataSink` for a list of small outputs in one node.

    The atlas × strategy × measure outputs number in the hundreds; one Nipype node each would cost
    more in bookkeeping than the writing itself.
    """

    input_spec = _FuncSinkManyInputSpec
    output_spec = _FuncSinkManyOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        if len(self.inputs.in_files) != len(self.inputs.entities):
            raise ValueError(
                f"{len(self.inputs.in_files)} files but {len(self.inputs.entities)} entity sets"
            )
        meta = dict(self.inputs.meta_dict) if isdefined(self.inputs.meta_dict) else {}
        out = []
        for in_file, ents in zip(self.inputs.in_files, self.inputs.entities, strict=True):
            single = FuncDataSink(
                base_directory=self.inputs.base_directory,
                subject=self.inputs.subject,
                in_file=in_file,
                entities=ents,
                meta_dict=meta,
            )
            out.append(single._sink()[0])
        self._results["out_files"] = out
        return runtime
