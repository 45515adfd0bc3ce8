"""A real invariance audit: the participant stage rerun on K=2 transformed copies of a tiny demo
subject (cheapest registration the anat options allow), with two controls that need no rerun:
the reference compared with itself (every residual exactly 0) and with a deliberately broken copy
of itself (template-space maps 4 mm off, volumes out of order, ROIs swapped)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _anat_options import CHEAP_ANAT

from pipeline.config import load_config
from pipeline.data.demo import DemoSpec, make_demo_dataset
from pipeline.outputs import ANAT_OUTPUTS, find_outputs

PNG = b"\x89PNG\r\n\x1a\n"


def _broken_copy(ref, dest, subject: str):
    """The reference derivatives as a broken pipeline would write them: template-space anatomy
    misregistered by 4 mm (two template voxels along x), ROI time series and confounds with their
    volumes out of order, connectivity matrices with their ROIs swapped."""
    shutil.copytree(ref, dest)
    rng = np.random.default_rng(0)
    anat, func = dest / f"sub-{subject}" / "anat", dest / f"sub-{subject}" / "func"
    for f in anat.glob("*_space-*.nii.gz"):
        img = nib.load(f)
        data = np.roll(img.get_fdata(dtype=np.float32), 2, axis=0)
        nib.save(nib.Nifti1Image(data, img.affine, img.header), f)
    for f in func.glob("*_timeseries.tsv"):
        table = pd.read_csv(f, sep="\t")
        table.iloc[rng.permutation(len(table))].to_csv(f, sep="\t", index=False)
    for f in func.glob("*_relmat.tsv"):
        table = pd.read_csv(f, sep="\t", index_col=0)
        order = rng.permutation(len(table))
        table.iloc[order, order].to_csv(f, sep="\t")
    return dest


@pytest.mark.slow
def test_tiny_audit_residuals_are_finite_measurable_and_below_a_broken_run(tmp_path):
    from pipeline.audit import compare_derivatives, residuals_path, run_audit, summarize_audits

    # the audit's machinery on the easier BOLD: at 6 mm and 38 volumes the realistic BOLD's FC is
    # so weakly structured that the ROI-permutation control below barely moves it (measured:
    # pose residual 0.79 of the control there); the realistic BOLD is measured in benchmarks/func.py
    spec = DemoSpec(
        sites=1,
        subjects_per_site=1,
        resolution=4.0,
        bold_resolution=6.0,
        n_volumes=40,
        seed=1,
        epi_effects=False,
        motion_regime="drift",
    )
    bids = make_demo_dataset(tmp_path / "bids", spec, progress=False)
    subject = next(bids.glob("sub-*")).name[4:]
    # 6P + trends: a 40-volume run keeps degrees of freedom (24P + aCompCor would use them all)
    func = {"denoise_strategies": ["minimal"], "motion_regressors": "6P", "atlases": ["power2011"]}
    config = load_config(None, anat=CHEAP_ANAT, func=func)
    out = tmp_path / "out"
    table = run_audit(bids, out, subject, 2, config, seed=0, progress=False)
    runs = tmp_path / "out_work" / "audit" / f"sub-{subject}"  # run_audit's default scratch

    # what it writes: the table, the transforms it drew, the figure, the group summary
    on_disk = pd.read_csv(residuals_path(out, subject), sep="\t")
    assert len(on_disk) == len(table) > 0
    pd.testing.assert_frame_equal(
        on_disk[["output", "measure"]], table[["output", "measure"]], check_dtype=False
    )
    drawn = json.loads(
        residuals_path(out, subject)
        .with_name(f"sub-{subject}_desc-invariance_transforms.json")
        .read_text()
    )["transforms"]
    assert [t["name"] for t in drawn] == ["g01", "g02"]
    assert set(on_disk["transform"]) == {"g01", "g02"}
    for t in drawn:  # the table's pose is the one applied, and a real one
        angle = np.degrees(np.arccos((np.trace(np.asarray(t["rotation"])) - 1) / 2))
        rows = on_disk[on_disk["transform"] == t["name"]]
        assert rows["rotation_deg"].to_numpy() == pytest.approx(angle, abs=0.01)
        assert angle > 5 and rows["run_ok"].all()
    figures = list((out / f"sub-{subject}" / "figures").glob("*_desc-invariance_audit.png"))
    assert len(figures) == 1 and figures[0].read_bytes()[:8] == PNG
    summary = summarize_audits(out)
    assert (out / "group" / "audit" / "invariance_summary.tsv").is_file()
    assert summary["n_transforms"].eq(2).all() and summary["n_subjects"].eq(1).all()
    assert len(summary) == on_disk.groupby(["output", "measure"]).ngroups

    # every output was compared: template-space anatomy and the BOLD tables
    measures = set(on_disk["measure"])
    assert {"dice", "rank_corr", "zscore_rmsd", "mean_abs_diff"} <= measures
    assert {"timeseries_corr", "confounds_corr", "fc_rmsd"} <= measures
    # every residual is a number (an ROI outside the BOLD mask must not turn FC into NaN)
    assert np.isfinite(on_disk["residual"]).all(), on_disk[~np.isfinite(on_disk["residual"])]
    # and measurable: the inputs really were transformed (an audit that compared the reference
    # with itself, or transforms that did nothing, would report exactly 0)
    assert on_disk["residual"].gt(1e-3).all(), on_disk

    # identity control: the reference against itself is exactly invariant
    ref = runs / "reference" / "derivatives"
    same = compare_derivatives(ref, ref, subject)
    assert len(same) == len(on_disk) // 2
    np.testing.assert_allclose(same["residual"].to_numpy(float), 0.0, atol=1e-12)

    # broken control: each real transform's residual is well below that of the reference
    # against a broken copy of itself (measured here: at most 0.55 of it)
    broken = compare_derivatives(ref, _broken_copy(ref, tmp_path / "broken", subject), subject)
    bound = broken.set_index(["output", "measure"])["residual"]
    assert np.isfinite(bound).all() and bound.gt(0).all(), broken
    worst = on_disk.groupby(["output", "measure"])["residual"].max()
    ratio = (worst / bound.reindex(worst.index)).dropna()
    assert len(ratio) == len(worst) and ratio.lt(0.75).all(), ratio.sort_values()

    # pose-robust registration: each transformed run passed the registration QC (measures that a
    # wrong registration lowers), with about the reference run's WM overlap
    qc = {
        name: json.loads(
            find_outputs(ANAT_OUTPUTS["qc_json"], runs / name / "derivatives", subject)[
                0
            ].read_text()
        )
        for name in ("reference", "g01", "g02")
    }
    assert all(record["passed"] for record in qc.values()), qc
    for name in ("g01", "g02"):
        assert abs(qc[name]["wm_dice"] - qc["reference"]["wm_dice"]) < 0.05, qc
