"""The anatomical Nipype workflow: graph (built, not run), sinks, errors, and one small run."""

from __future__ import annotations

import json

import ants
import nibabel as nib
import numpy as np
import pytest
from scipy import stats
from scipy.spatial.transform import Rotation

from pipeline.anat._antsio import nib_to_ants
from pipeline.anat.options import AnatOptions
from pipeline.anat.synthetic import pose_image, rigid_about
from pipeline.data.templates import load_template
from pipeline.errors import ImageError, QCError
from pipeline.workflows.anat import expected_paths, init_anat_wf, init_ds_anat_wf, run_anat_stage
from pipeline.workflows.interfaces import DerivativesDataSink

FAST = dict(
    registration_voxel_mm=6.0,
    pose_n_rotations=400,
    pose_fine_mm=6.0,
    pose_n_refine=2,
    rigid_iterations=[20, 10],
    affine_iterations=[30, 10],
    affine_shrink_factors=[2, 1],
    affine_smoothing_sigmas=[1.0, 0.0],
    syn_iterations=[10, 5, 0],
    n4_shrink_factor=2,
)


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
        "qc_min_dice" not in register.inputs.options
    )  # QC thresholds do not invalidate the registration


def test_ds_workflow_writes_every_issue_output(tmp_path):
    ds = init_ds_anat_wf(output_dir=tmp_path, subject="sub-01", resolution=2, metadata={"Seed": 0})
    sinks = [n for n in ds.list_node_names() if n.startswith("ds_")]
    paths = expected_paths(tmp_path, "01", 2)
    assert len(sinks) == len(paths)
    names = {p.name for p in paths.values()}
    std = "sub-01_space-MNI152NLin2009aSym_res-2"
    assert {
        "sub-01_desc-preproc_T1w.nii.gz",
        "sub-01_desc-brain_mask.nii.gz",
        f"{std}_desc-preproc_T1w.nii.gz",
        f"{std}_desc-brain_mask.nii.gz",
        f"{std}_label-GM_probseg.nii.gz",
        f"{std}_label-WM_probseg.nii.gz",
        f"{std}_label-CSF_probseg.nii.gz",
        "sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5",
        "sub-01_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.h5",
        "sub-01_desc-registration_qc.tsv",
    } <= names


def test_derivatives_data_sink_names_and_sidecar(tmp_path):
    src = tmp_path / "work" / "x.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.float32), np.eye(4)), src)
    sink = DerivativesDataSink(
        base_directory=str(tmp_path / "out"),
        subject="01",
        in_file=str(src),
        suffix="probseg",
        space="MNI152NLin2009aSym",
        res=2,
        label="GM",
        meta_dict={"Seed": 5},
    )
    result = sink.run(cwd=str(tmp_path / "work"))
    dest = (
        tmp_path / "out/sub-01/anat/sub-01_space-MNI152NLin2009aSym_res-2_label-GM_probseg.nii.gz"
    )
    assert result.outputs.out_file == str(dest)
    assert json.loads(dest.with_name(dest.name.replace(".nii.gz", ".json")).read_text()) == {
        "Seed": 5
    }
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
    assert qc["passed"] and qc["dice"] > 0.85
    # the written forward transform pulls the raw T1w onto the template
    warped = ants.apply_transforms(
        nib_to_ants(tpl.t1w), nib_to_ants(nib.load(t1w)), [str(paths["anat2std_xfm"])]
    )
    assert stats.spearmanr(warped.numpy()[mask], tpl.t1w.get_fdata()[mask]).statistic > 0.7
    std_t1w = nib.load(paths["std_t1w"])
    assert std_t1w.shape == tpl.t1w.shape and np.allclose(std_t1w.affine, tpl.t1w.affine)

    # an impossible QC threshold: only QC reruns (cached registration), outputs and record are written
    with pytest.raises(QCError, match=r"sub-01: registration QC failed: dice=") as info:
        run_anat_stage(options=AnatOptions(**FAST, qc_min_dice=0.9999), **kwargs)
    assert "\n" not in str(info.value)
    qc = json.loads(paths["qc_json"].read_text())
    assert not qc["passed"] and qc["failures"][0].startswith("dice=")
    assert all(p.exists() for p in paths.values())
