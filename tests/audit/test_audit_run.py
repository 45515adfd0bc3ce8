"""A real invariance audit: the participant stage rerun on K=2 transformed copies of a tiny demo
subject (cheapest registration the anat options allow)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _anat_options import CHEAP_ANAT

from pipeline.config import load_config
from pipeline.data.demo import DemoSpec, make_demo_dataset


@pytest.mark.slow
def test_tiny_audit_writes_its_residual_table(tmp_path):
    from pipeline.audit import residuals_path, run_audit, summarize_audits

    spec = DemoSpec(
        sites=1, subjects_per_site=1, resolution=4.0, bold_resolution=6.0, n_volumes=40, seed=1
    )
    bids = make_demo_dataset(tmp_path / "bids", spec, progress=False)
    subject = next(bids.glob("sub-*")).name[4:]
    # 6P + trends: a 40-volume run keeps degrees of freedom (24P + aCompCor would use them all)
    func = {"denoise_strategies": ["minimal"], "motion_regressors": "6P", "atlases": ["power2011"]}
    config = load_config(None, anat=CHEAP_ANAT, func=func)
    table = run_audit(bids, tmp_path / "out", subject, 2, config, seed=0, progress=False)
    on_disk = pd.read_csv(residuals_path(tmp_path / "out", subject), sep="\t")
    assert len(on_disk) == len(table) > 0
    assert set(on_disk["transform"]) == {"g01", "g02"}
    assert {"dice", "rank_corr", "mean_abs_diff"} <= set(on_disk["measure"])
    assert on_disk["rotation_deg"].gt(0).all()
    # pose-robust registration: the brain mask in template space barely moves
    dice = on_disk.loc[on_disk["measure"] == "dice", "value"].to_numpy()
    assert np.all(dice > 0.8), on_disk
    # the BOLD outputs were audited too: ROI time series follow the reference run, FC is close
    ts = on_disk.loc[on_disk["measure"] == "timeseries_corr", "value"]
    fc = on_disk.loc[on_disk["measure"] == "fc_rmsd", "value"]
    assert len(ts) >= 2 and ts.notna().all() and ts.median() > 0.5, on_disk
    assert len(fc) >= 2 and fc.notna().all() and fc.median() < 0.5, on_disk
    assert on_disk.loc[on_disk["measure"] == "confounds_corr", "value"].notna().all()
    assert (tmp_path / "out" / f"sub-{subject}" / "figures").glob("*invariance_audit.png")
    assert not summarize_audits(tmp_path / "out").empty
