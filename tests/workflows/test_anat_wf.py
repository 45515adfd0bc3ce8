"""The anatomical Nipype workflow: graph (built, not run), sinks, errors, and one small run."""

from __future__ import annotations

import json

import ants
import nibabel as nib
import numpy as np
import pytest
from _anat_options import FAST_ANAT
from scipy import stats
from scipy.spatial.transform import Rotation

from pipeline.anat.options import AnatOptions
from pipeline.anat.synthetic import pose_image, rigid_about
from pipeline.antsio import nib_to_ants
from pipeline.data.templates import load_template
from pipeline.errors import ImageError, QCError
from pipeline.interfaces.bids import DerivativesDataSink
from pipeline.workflows.anat import expected_paths, init_anat_wf, init_ds_anat_wf, run_anat_stage

FAST = FAST_ANAT


def test_anat_workflow_graph_builds():
    wf = init_anat_wf(options=AnatOptions(), subject="01", seed=3)
    names = set(wf.list_node_names())
    assert {
        "inputnode",
        "outputnode",
        "validate",
        "n4",
        "register",
        "brainmask",
        "tissues",
        "qc",
    } <= names
    graph = wf._create_flat_graph()
    out = next(n for n in graph.nodes if n.name == "outputnode")
    connected = {c[1] for _, _, d in graph.in_edges(out, data=True) for c in d["connect"]}
    assert connected == set(out.inputs.copyable_trait_names())
    register = next(n for n in graph.nodes if n.name == "register")
    assert register.inputs.seed == 3
    assert (
        "qc_min_wm_dice" not in register.inputs.options
    )  # QC thresholds do not invalidate the registration


def test_ds_workflow_writes_every_issue_output(tmp_path):
    options = AnatOptions()
    source = {"sub": "01"}
    ds = init_ds_anat_wf(output_dir=tmp_path, source=source, options=options, metadata={"Seed": 0})
    sinks = [n for n in ds.list_node_names() if n.startswith("ds_")]
    paths = expected_paths(tmp_path, source, options)
    assert len(sinks) == len(paths)
    names = {p.name for p in paths.values()}
    std = "sub-01_space-MNI152NLin2009aSym_res-2"
    assert {
        "sub-01_desc-preproc_T1w.nii.gz",
        "sub-01_desc-brain_mask.nii.gz",
        "sub-01_dseg.nii.gz",
        "sub-01_label-GM_probseg.nii.gz",
        "sub-01_label-WM_probseg.nii.gz",
        "sub-01_label-CSF_probseg.nii.gz",
        f"{std}_desc-preproc_T1w.nii.gz",
        f"{std}_desc-brain_mask.nii.gz",
        f"{std}_label-GM_probseg.nii.gz",
        f"{std}_label-WM_probseg.nii.gz",
        f"{std}_label-CSF_probseg.nii.gz",
        "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5",
        "sub-01_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5",
        "sub-01_desc-registration_qc.tsv",
    } <= names
    # the modulated GM map is declared, and written only when asked for
    assert not any("desc-modulated" in n for n in names)
    with_vbm = expected_paths(tmp_path, source, AnatOptions(write_modulated_gm=True))
    assert with_vbm["std_gm_modulated"].name == f"{std}_label-GM_desc-modulated_probseg.nii.gz"


def test_anat_names_keep_acquisition_entities_but_not_session_or_run(tmp_path):
    """Anatomy is one subject-level reference: acq/ce/rec kept, ses/run dropped."""
    from pipeline.outputs import anat_source

    source = anat_source("/d/sub-01/ses-2/anat/sub-01_ses-2_acq-mprage_run-3_T1w.nii.gz")
    assert source == {"sub": "01", "acq": "mprage"}
    paths = expected_paths(tmp_path, source, AnatOptions())
    assert paths["t1w_mask"] == tmp_path / "sub-01/anat/sub-01_acq-mprage_desc-brain_mask.nii.gz"


def test_derivatives_data_sink_names_and_sidecar(tmp_path):
    src = tmp_path / "work" / "x.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), src)
    sink = DerivativesDataSink(
        base_directory=str(tmp_path / "out"),
        stage="anat",
        output="std_gm_probseg",
        source={"sub": "01"},
        in_file=str(src),
        res=2,
        meta_dict={"Seed": 5},
    )
    result = sink.run(cwd=str(tmp_path / "work"))
    dest = (
        tmp_path / "out/sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_label-GM_probseg.nii.gz"
    )
    assert result.outputs.out_file == str(dest)
    side = json.loads(dest.with_name(dest.name.replace(".nii.gz", ".json")).read_text())
    assert side["Seed"] == 5 and side["Description"].startswith("GM probability")
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted(
        [dest.name, dest.name[:-7] + ".json"]
    )


def test_run_anat_stage_rejects_bad_t1w_in_one_line(tmp_path):
    bad = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(
        nib.Nifti1Image(
            np.random.default_rng(0).random((6, 6, 6, 4)).astype(np.float32), np.eye(4)
        ),
        bad,
    )
    with pytest.raises(ImageError, match=r"sub-01_T1w\.nii\.gz: image is 4-D") as info:
        run_anat_stage(
            t1w=bad,
            subject="01",
            output_dir=tmp_path / "out",
            work_dir=tmp_path / "work",
            options=AnatOptions(),
        )
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_run_anat_stage_end_to_end_and_qc_failure(tmp_path, rng):
    tpl = load_template(2)
    mask = tpl.mask.get_fdata() > 0
    center = np.argwhere(mask).mean(0) @ tpl.t1w.affine[:3, :3].T + tpl.t1w.affine[:3, 3]
    truth = rigid_about(
        Rotation.from_euler("y", 180, degrees=True).as_matrix(), center, [10, -5, 8]
    )
    t1w = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(
        pose_image(tpl.t1w, truth, voxel_size=4.0, layout="permuted", gamma=1.3, offset=20.0), t1w
    )
    kwargs = dict(
        t1w=t1w, subject="01", output_dir=tmp_path / "out", work_dir=tmp_path / "work", seed=1
    )

    paths = run_anat_stage(options=AnatOptions(**FAST), **kwargs)
    assert all(p.exists() for p in paths.values())
    sidecar = json.loads(paths["std_t1w"].with_suffix("").with_suffix(".json").read_text())
    assert sidecar["Seed"] == 1 and "antspyx" in sidecar["Software"]
    assert sidecar["Parameters"]["pose_n_rotations"] == 400
    qc = json.loads(paths["qc_json"].read_text())
    assert qc["passed"] and qc["wm_dice"] > 0.62 and qc["flags"] == []
    assert qc["segmentation"]["Method"] == "atropos"
    gm_side = json.loads(paths["t1w_gm_probseg"].with_suffix("").with_suffix(".json").read_text())
    assert gm_side["Method"] == "atropos" and gm_side["PriorWeight"] == 0.1
    dseg = np.asarray(nib.load(paths["t1w_dseg"]).dataobj)
    assert set(np.unique(dseg)) == {0, 1, 2, 3}
    # the written forward transform pulls the raw T1w onto the template
    warped = ants.apply_transforms(
        nib_to_ants(tpl.t1w), nib_to_ants(nib.load(t1w)), [str(paths["anat2std_xfm"])]
    )
    assert stats.spearmanr(warped.numpy()[mask], tpl.t1w.get_fdata()[mask]).statistic > 0.7
    std_t1w = nib.load(paths["std_t1w"])
    assert std_t1w.shape == tpl.t1w.shape and np.allclose(std_t1w.affine, tpl.t1w.affine)

    # an impossible QC threshold: only QC reruns (cached registration), outputs and record are written
    with pytest.raises(QCError, match=r"sub-01: registration QC failed: wm_dice=") as info:
        run_anat_stage(options=AnatOptions(**FAST, qc_min_wm_dice=0.9999), **kwargs)
    assert "\n" not in str(info.value)
    qc = json.loads(paths["qc_json"].read_text())
    assert not qc["passed"] and qc["failures"][0].startswith("wm_dice=")
    assert all(p.exists() for p in paths.values())
