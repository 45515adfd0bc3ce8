"""The group level: status table, subjects left out, harmonization of template-space GM maps."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.bids_names import derivative_path
from pipeline.config import load_config
from pipeline.data.templates import load_template
from pipeline.group import run_group
from pipeline.io import write_json, write_text
from pipeline.workflows.participant import failure_path, status_path


def _fake_dataset(tmp_path, rng, n_per_site=4, sites=("siteA", "siteB")):
    """A BIDS participants table and template-space GM maps with a planted site shift."""
    bids, out = tmp_path / "bids", tmp_path / "out"
    template = load_template(2)
    gm = template.gm.get_fdata().astype(np.float32)
    rows = []
    for s, site in enumerate(sites):
        for j in range(n_per_site):
            sub = f"{s}{j}"
            rows.append(
                {
                    "participant_id": f"sub-{sub}",
                    "site": site,
                    "age": 20 + j,
                    "sex": "MF"[j % 2],
                    "diagnosis": ["ASD", "TDC"][j % 2],
                }
            )
            data = gm * (1.0 + 0.3 * s) + 0.2 * s + rng.normal(0, 0.02, gm.shape).astype(np.float32)
            path = derivative_path(
                out, sub, "anat", space="MNI152NLin2009aSym", res=2, label="GM", suffix="probseg"
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, template.t1w.affine), path)
            write_json(status_path(out, sub), {"status": "ok"})
    write_text(bids / "participants.tsv", pd.DataFrame(rows).to_csv(sep="\t", index=False))
    return bids, out, [r["participant_id"][4:] for r in rows]


def test_group_harmonizes_gm_maps_and_lists_failures(tmp_path, rng):
    bids, out, subjects = _fake_dataset(tmp_path, rng)
    # one subject failed upstream: it is reported and left out
    status_path(out, subjects[-1]).unlink()
    write_json(failure_path(out, subjects[-1]), {"stage": "anat", "error": "QC failed"})
    config = load_config(None)
    config.gauge.qc_permutations = 10
    config.gauge.qc_max_features = 200
    code = run_group(bids, out, subjects, config)
    assert code == 1  # a subject was left out
    status = pd.read_csv(
        out / "group" / "participants_status.tsv", sep="\t", index_col=0, dtype={"participant": str}
    )
    assert status.loc[subjects[-1], "status"] == "failed"
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    assert summary["left_out"] == [subjects[-1]] and summary["n_usable"] == len(subjects) - 1
    assert summary["stages"]["harmonization"]["status"] == "ok"
    written = {p.name for p in (out / "group" / "harmonization").iterdir()}
    assert any(name.endswith(".npz") for name in written), written


def test_group_skips_harmonization_with_one_site(tmp_path, rng):
    bids, out, subjects = _fake_dataset(tmp_path, rng, n_per_site=3, sites=("siteA",))
    assert run_group(bids, out, subjects, load_config(None)) == 0
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    assert summary["stages"]["harmonization"] == {
        "status": "skipped",
        "reason": "fewer than two sites",
    }
