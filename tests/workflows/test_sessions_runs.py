"""Several sessions × several runs: every run is processed and named from its own entities, and
nothing is overwritten (the earlier data loss: outputs kept only the task entity)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import _templateflow  # a TemplateFlow cache with a template symprep does not ship
import nibabel as nib
import numpy as np
import pytest
import yaml
from _anat_options import CHEAP_ANAT

from pipeline.cli import main
from pipeline.outputs import FUNC_OUTPUTS, ROI_OUTPUTS, find_outputs

sys.path.insert(0, str(Path(__file__).parents[1] / "func"))
import _funcdata  # noqa: E402  (one demo subject per session, shared with tests/func)


def _two_sessions_two_runs(src: Path, dest: Path) -> list[tuple[str, str]]:
    """sub-01 with ses-1/ses-2 × run-1/run-2 made from the demo subject's one run (each run a
    different, seeded perturbation so that the four outputs cannot coincide)."""
    for name in ("dataset_description.json", "participants.tsv", "task-rest_bold.json"):
        shutil.copy(src / name, dest / name)
    (dest / "sub-01" / "ses-1" / "anat").mkdir(parents=True)
    shutil.copy(
        src / "sub-01/anat/sub-01_T1w.nii.gz", dest / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    )
    bold = nib.load(src / "sub-01/func/sub-01_task-rest_bold.nii.gz")
    data = bold.get_fdata(dtype=np.float32)
    side = json.loads((src / "sub-01/func/sub-01_task-rest_bold.json").read_text())
    runs = []
    for k, (ses, run) in enumerate([(s, r) for s in ("1", "2") for r in ("1", "2")]):
        func = dest / "sub-01" / f"ses-{ses}" / "func"
        func.mkdir(parents=True, exist_ok=True)
        stem = f"sub-01_ses-{ses}_task-rest_run-{run}_bold"
        noise = np.random.default_rng(k).normal(0, 0.01 * data.std(), data.shape)
        nib.save(
            nib.Nifti1Image((data + noise).astype(np.float32), bold.affine, bold.header),
            func / f"{stem}.nii.gz",
        )
        (func / f"{stem}.json").write_text(json.dumps(side))
        runs.append((ses, run))
    return runs


@pytest.mark.slow
def test_two_sessions_two_runs_give_four_runs_of_outputs(tmp_path_factory, tmp_path, monkeypatch):
    """... in a template from TemplateFlow's cache (``--output-spaces``): the outputs are on its
    grid and named after it."""
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "templateflow"))
    shape = _templateflow.cached_template(tmp_path / "templateflow")
    space = f"{_templateflow.NAME}:res-2"
    src = _funcdata.func_bids(tmp_path_factory)
    bids = tmp_path / "bids"
    bids.mkdir()
    runs = _two_sessions_two_runs(src, bids)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "anat": CHEAP_ANAT,
                "func": {
                    "atlases": ["dosenbach2010"],
                    "denoise_strategies": ["minimal"],
                    "connectivity": ["correlation"],
                },
            }
        )
    )
    out = tmp_path / "out"
    code = main(
        [
            str(bids),
            str(out),
            "participant",
            "--config",
            str(config),
            "-w",
            str(tmp_path / "work"),
            "--skip-bids-validation",
            "--output-spaces",
            space,
        ]
    )
    assert code == 0
    # anatomy: one subject-level reference, named without ses/run
    assert (out / "sub-01/anat/sub-01_desc-brain_mask.nii.gz").exists()
    # ... registered to the cached template: on its grid, named after it
    tpl = f"space-{_templateflow.NAME}_res-2"
    std_t1w = nib.load(out / f"sub-01/anat/sub-01_{tpl}_desc-preproc_T1w.nii.gz")
    assert std_t1w.shape == shape
    assert (out / f"sub-01/anat/sub-01_from-T1w_to-{_templateflow.NAME}_mode-image_xfm.h5").exists()
    assert not list(out.rglob("*MNI152NLin2009aSym*"))
    record = json.loads((out / "logs/sub-01_participant.json").read_text())
    labels = {k.split(".")[1] for k in record["outputs"] if k.startswith("func.")}
    assert labels == {f"ses-{s}_task-rest_run-{r}" for s, r in runs}
    for ses, run in runs:
        folder = out / "sub-01" / f"ses-{ses}" / "func"
        stem = f"sub-01_ses-{ses}_task-rest_run-{run}"
        assert (folder / f"{stem}_desc-confounds_timeseries.tsv").exists()
        bold = nib.load(
            folder / f"{stem}_space-{_templateflow.NAME}_res-3_desc-preproc_bold.nii.gz"
        )
        # the 3 mm grid spans the cached template's field of view, not the shipped one's
        assert bold.shape[:3] == tuple((np.array(shape) - 1) * 2 // 3 + 1)
        assert np.allclose(bold.affine[:3, 3], std_t1w.affine[:3, 3], atol=1e-3)
    # every declared single-file output exists once per run, and the four runs differ
    for key, spec in FUNC_OUTPUTS.items():
        assert len(find_outputs(spec, out, "01")) == 4, key
    relmats = find_outputs(ROI_OUTPUTS["relmat"], out, "01", atlas="Dosenbach2010")
    assert len(relmats) == 4
    assert len({p.read_bytes() for p in relmats}) == 4
    # the report has a section per run
    html = (out / "sub-01.html").read_text()
    for ses, run in runs:
        assert f"ses-{ses}_task-rest_run-{run}" in html
    # a rerun of the same BOLD with one session filtered out processes only the other
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"bold": {"session": "2"}}))
    out2 = tmp_path / "out2"
    code = main(
        [
            str(bids),
            str(out2),
            "participant",
            "--config",
            str(config),
            "-w",
            str(tmp_path / "work"),
            "--skip-bids-validation",
            "--bids-filter-file",
            str(filters),
            "--output-spaces",
            space,
        ]
    )
    assert code == 0
    assert len(find_outputs(FUNC_OUTPUTS["confounds"], out2, "01")) == 2
    assert not (out2 / "sub-01" / "ses-1" / "func").exists()
