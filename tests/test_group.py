"""The group level: status table, subjects left out, harmonization of template-space GM maps."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.bids_names import derivative_path
from pipeline.config import load_config
from pipeline.data.templates import load_template
from pipeline.group import run_group
from pipeline.io import write_json, write_text
from pipeline.outputs import failure_path, status_path

PLANTED = {"centre_mm": [30.0, -20.0, 10.0], "sigma_mm": 6.0}


def _fake_dataset(tmp_path, rng, n_per_site=4, sites=("siteA", "siteB"), atrophy=0.0):
    """A BIDS participants table and template-space GM maps with a planted site shift (and, with
    ``atrophy``, ASD subjects' GM lowered by that fraction in a Gaussian at ``PLANTED``)."""
    bids, out = tmp_path / "bids", tmp_path / "out"
    template = load_template(2)
    gm = template.gm.get_fdata().astype(np.float32)
    ijk = np.indices(gm.shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(template.t1w.affine, ijk).reshape(*gm.shape, 3)
    r2 = ((xyz - np.asarray(PLANTED["centre_mm"])) ** 2).sum(-1)
    loss = (1 - atrophy * np.exp(-r2 / (2 * PLANTED["sigma_mm"] ** 2))).astype(np.float32)
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
            anatomy = gm * loss if j % 2 == 0 else gm  # ASD: j even
            noise = rng.normal(0, 0.02, gm.shape).astype(np.float32)
            data = anatomy * (1.0 + 0.3 * s) + 0.2 * s + noise
            path = derivative_path(
                out, sub, "anat", space="MNI152NLin2009aSym", res=2, label="GM", suffix="probseg"
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, template.t1w.affine), path)
            write_json(status_path(out, sub), {"status": "ok"})
    write_text(bids / "participants.tsv", pd.DataFrame(rows).to_csv(sep="\t", index=False))
    write_json(bids / "sourcedata" / "groundtruth" / "diagnosis_effect.json", PLANTED)
    return bids, out, [r["participant_id"][4:] for r in rows]


@pytest.mark.parametrize("atrophy", [0.5, 0.0])
def test_planted_gm_difference_is_found_where_it_is_before_and_after_combat(tmp_path, rng, atrophy):
    """The group difference map peaks at the planted atrophy, is weak elsewhere, and ComBat keeps
    it; with nothing planted (the negative control) the same measures say so."""
    bids, out, subjects = _fake_dataset(tmp_path, rng, n_per_site=6, atrophy=atrophy)
    config = load_config(None)
    config.gauge.features = ["gm_voxelwise"]
    config.gauge.qc_permutations = 0
    config.gauge.qc_max_features = 200
    assert run_group(bids, out, subjects, config) == 0
    summary = json.loads((out / "group" / "gm_difference" / "summary.json").read_text())
    for name in ("raw", "harmonized"):
        entry = summary[name]
        assert entry["contrast"] == "TDC - ASD" and entry["n"] == {"ASD": 6, "TDC": 6}
        rec = entry["recovery"]
        if atrophy:
            assert rec["centroid_distance_mm"] < 6, (name, rec)
            assert rec["peak_distance_mm"] < 2.5 * PLANTED["sigma_mm"], (name, rec)
            assert rec["specificity"] > 4 and rec["top_fraction_inside"] > 0.6, (name, rec)
            assert entry["peak_t"] > 1.5  # TDC - ASD > 0: the ASD group lost grey matter
        else:
            assert rec["specificity"] < 1.5 and rec["top_fraction_inside"] < 0.3, (name, rec)
    if atrophy:  # the site variance gone, the same effect stands out more, at the same place
        assert summary["harmonized"]["peak_t"] > 2 * summary["raw"]["peak_t"]
    tmap = nib.load(out / summary["harmonized"]["tmap"])
    assert tmap.shape == load_template(2).mask.shape


def test_group_harmonizes_gm_maps_and_lists_failures(tmp_path, rng):
    from pipeline.gauge import ComBat
    from pipeline.group_features import gm_features

    bids, out, subjects = _fake_dataset(tmp_path, rng)
    # one subject failed upstream: it is reported and left out
    status_path(out, subjects[-1]).unlink()
    write_json(failure_path(out, subjects[-1]), {"stage": "anat", "error": "QC failed"})
    config = load_config(None)
    config.gauge.qc_permutations = 10
    config.gauge.qc_max_features = 200
    code = run_group(bids, out, subjects, config)
    assert code == 1  # a subject was left out
    usable = subjects[:-1]

    # the status table: every subject, in order, with the failing stage and its error
    status = pd.read_csv(
        out / "group" / "participants_status.tsv", sep="\t", index_col=0, dtype={"participant": str}
    ).fillna("")
    assert list(status.index) == subjects
    assert status.loc[subjects[-1]].to_dict() == {
        "status": "failed",
        "stage": "anat",
        "error": "QC failed",
    }
    assert status.loc[usable, "status"].eq("ok").all()
    assert status.loc[usable, ["stage", "error"]].eq("").all().all()
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    assert summary["left_out"] == [subjects[-1]] and summary["n_usable"] == len(usable)
    stage = summary["stages"]["harmonization"]
    assert stage["status"] == "ok" and stage["gm_voxelwise"]["status"] == "ok"
    # what had no input says so (no T1w maps, no FC matrices in this dataset)
    assert stage["t1w_voxelwise"]["reason"] == "no template-space T1W maps from two sites"
    assert stage["fc"]["reason"] == "no FC matrices from two sites"

    # the regional GM features: those of the usable subjects' maps, and nobody else's
    hdir = out / "group" / "harmonization"
    original = pd.read_csv(
        hdir / "desc-original_features.tsv", sep="\t", index_col=0, dtype={"participant_id": str}
    )
    harmonized = pd.read_csv(
        hdir / "desc-harmonized_features.tsv", sep="\t", index_col=0, dtype={"participant_id": str}
    )
    assert list(original.index) == list(harmonized.index) == usable
    assert list(harmonized.columns) == list(original.columns)
    expected = gm_features(out, usable, 2, config.gauge.regional_block_mm)
    np.testing.assert_allclose(original.to_numpy(), expected.to_numpy(), rtol=1e-6, atol=1e-7)
    # the planted site shift (gain 1.3, offset 0.2) is gone; each subject's own anatomy stays
    participants = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    participants = participants.set_index(participants["participant_id"].str[4:]).loc[usable]
    site_a = participants["site"].eq("siteA").to_numpy()

    def site_gap(x: np.ndarray) -> float:
        return float(np.abs(x[site_a].mean(0) - x[~site_a].mean(0)).mean())

    assert site_gap(original.to_numpy()) > 0.2
    assert site_gap(harmonized.to_numpy()) < 0.05 * site_gap(original.to_numpy())

    # (the subjects share the template's anatomy: what is their own is how each differs from
    # its site's mean, and that ComBat, affine per feature within a site, keeps)
    def own(x: np.ndarray) -> np.ndarray:
        means = np.where(site_a[:, None], x[site_a].mean(0), x[~site_a].mean(0))
        return x - means

    for sub, a, b in zip(usable, own(original.to_numpy()), own(harmonized.to_numpy()), strict=True):
        r = np.corrcoef(a, b)[0, 1]
        assert r > 0.9, (sub, r)
    # the saved model is the one that harmonized them
    covariates = participants[["age", "sex"]].astype({"age": float}).reset_index(drop=True)
    again = ComBat.load(hdir / "combat_model.npz").transform(
        original.to_numpy(), participants["site"].tolist(), covariates
    )
    np.testing.assert_allclose(again, harmonized.to_numpy(), rtol=1e-6, atol=1e-8)
    # its QC, on the usable subjects only: sites predictable before, less so after (7 subjects
    # in CV folds are too few to ask for chance; measured here 1.0 -> 0.71)
    qc = json.loads((hdir / "qc.json").read_text())
    assert qc["n_subjects"] == len(usable) and sorted(qc["sites"]) == ["siteA", "siteB"]
    before, after = (qc["site_prediction"][k]["balanced_accuracy"] for k in ("before", "after"))
    assert before > 0.9 and after < before, qc["site_prediction"]


def test_group_skips_harmonization_with_one_site(tmp_path, rng):
    bids, out, subjects = _fake_dataset(tmp_path, rng, n_per_site=3, sites=("siteA",))
    assert run_group(bids, out, subjects, load_config(None)) == 0
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    assert summary["stages"]["harmonization"] == {
        "status": "skipped",
        "reason": "fewer than two sites",
    }


def test_voxelwise_harmonization_on_a_local_dask_cluster_matches_in_memory_combat(tmp_path, rng):
    """Every in-mask voxel of the GM maps through ComBat on worker processes, written as NIfTI:
    the same numbers as ComBat on the in-memory matrix, and the planted site shift is gone."""
    from pipeline.gauge import ComBat

    bids, out, subjects = _fake_dataset(tmp_path, rng)
    config = load_config(None)
    config.gauge.features = ["gm_voxelwise"]
    config.gauge.qc_permutations = 10
    config.gauge.qc_max_features = 300
    config.dask.n_workers, config.dask.memory_limit = 2, "1GB"
    config.work_dir = str(tmp_path / "work")
    assert run_group(bids, out, subjects, config) == 0
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    vox = summary["stages"]["harmonization"]["gm_voxelwise"]
    mask = load_template(2).mask.get_fdata() > 0.5
    assert vox["status"] == "ok" and vox["n_voxels"] == int(mask.sum())
    hdir = out / "group" / "harmonization" / "gm_voxelwise"
    name = "sub-{}_space-MNI152NLin2009aSym_res-2_label-GM_desc-harmonized_probseg.nii.gz"
    harmonized = np.stack([nib.load(hdir / name.format(s)).get_fdata()[mask] for s in subjects])
    raw = np.stack(
        [
            nib.load(
                derivative_path(
                    out, s, "anat", space="MNI152NLin2009aSym", res=2, label="GM", suffix="probseg"
                )
            ).get_fdata()[mask]
            for s in subjects
        ]
    )
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    reference = ComBat().fit_transform(
        raw, participants["site"].tolist(), participants[["age", "sex"]]
    )
    np.testing.assert_allclose(harmonized, reference, atol=1e-4)  # float32 maps
    site_a = participants["site"].eq("siteA").to_numpy()
    gap_before = np.abs(raw[site_a].mean(0) - raw[~site_a].mean(0)).mean()
    gap_after = np.abs(harmonized[site_a].mean(0) - harmonized[~site_a].mean(0)).mean()
    assert gap_after < 0.1 * gap_before
    qc = json.loads((hdir / "qc.json").read_text())
    assert qc["n_voxels"] == int(mask.sum()) and qc["n_voxels_qc"] == 300
    before, after = (qc["site_prediction"][k]["balanced_accuracy"] for k in ("before", "after"))
    assert before > 0.9 and after < before
    assert not list((tmp_path / "work" / "group").rglob("*.npy"))  # scratch matrices removed


def test_fc_edges_are_fisher_z_of_the_upper_triangle(tmp_path):
    from pipeline.group_features import fc_features

    rois = ["roi001", "roi002", "roi003"]
    r = np.array([[1.0, 0.5, -0.2], [0.5, 1.0, 0.999999999], [-0.2, 0.999999999, 1.0]])
    for sub in ("01", "02"):
        path = (
            tmp_path
            / f"sub-{sub}"
            / "func"
            / f"sub-{sub}_task-rest_space-MNI152NLin2009aSym_atlas-Power2011_"
            "meas-PearsonCorrelation_desc-filtnoglobal_relmat.tsv"
        )
        path.parent.mkdir(parents=True)
        path.write_text(pd.DataFrame(r, index=rois, columns=rois).to_csv(sep="\t"))
    edges = fc_features(tmp_path, ["01", "02", "03"], "Power2011", "filt_noglobal", "rest")
    assert list(edges.index) == ["01", "02"]  # sub-03 has no matrix
    assert list(edges.columns) == ["roi001__roi002", "roi001__roi003", "roi002__roi003"]
    np.testing.assert_allclose(edges.loc["01"].to_numpy()[:2], np.arctanh([0.5, -0.2]))
    assert np.isfinite(edges.to_numpy()).all()  # |r| -> 1 clipped
    assert fc_features(tmp_path, ["01"], "Power2011", "filt_global").empty


@pytest.mark.parametrize("method", ["zscore", "nyul"])
def test_t1w_voxelwise_is_intensity_normalized_then_harmonized(tmp_path, rng, method):
    """Template-space T1w with a per-site gain and offset (a scanner gauge): normalized per image
    (Nyúl fitted on the training subjects only), then ComBat; maps written with the T1w suffix."""
    bids, out, subjects = _fake_dataset(tmp_path, rng)
    template = load_template(2)
    t1w = template.t1w.get_fdata().astype(np.float32)
    participants = pd.read_csv(bids / "participants.tsv", sep="\t")
    for sub, site in zip(subjects, participants["site"], strict=True):
        gain, offset = (1.0, 0.0) if site == "siteA" else (2.5, 40.0)
        data = gain * t1w * rng.uniform(0.95, 1.05) + offset + rng.normal(0, 0.05, t1w.shape)
        path = derivative_path(
            out, sub, "anat", space="MNI152NLin2009aSym", res=2, desc="preproc", suffix="T1w"
        )
        nib.save(nib.Nifti1Image(data.astype(np.float32), template.t1w.affine), path)
    config = load_config(None)
    config.gauge.features = ["t1w_voxelwise"]
    config.gauge.intensity_method = method
    config.gauge.qc_permutations = 0
    config.gauge.qc_max_features = 200
    config.dask.scheduler = "threads"
    config.work_dir = str(tmp_path / "work")
    assert run_group(bids, out, subjects, config) == 0
    summary = json.loads((out / "group" / "group_summary.json").read_text())
    assert summary["stages"]["harmonization"]["t1w_voxelwise"]["status"] == "ok"
    hdir = out / "group" / "harmonization" / "t1w_voxelwise"
    mask = template.mask.get_fdata() > 0.5
    maps = np.stack(
        [
            nib.load(
                hdir / f"sub-{s}_space-MNI152NLin2009aSym_res-2_desc-harmonized_T1w.nii.gz"
            ).get_fdata()[mask]
            for s in subjects
        ]
    )
    raw = np.stack(
        [
            nib.load(
                derivative_path(
                    out, s, "anat", space="MNI152NLin2009aSym", res=2, desc="preproc", suffix="T1w"
                )
            ).get_fdata()[mask]
            for s in subjects
        ]
    )
    site_a = participants["site"].eq("siteA").to_numpy()

    def site_gap(x):  # per-voxel site-mean difference, in units of the maps' spread
        return np.abs(x[site_a].mean(0) - x[~site_a].mean(0)).mean() / x.std()

    assert site_gap(raw) > 1.0 and site_gap(maps) < 0.1 * site_gap(raw)
    # the anatomy survives: every harmonized map still correlates with the template
    for row in maps:
        assert np.corrcoef(row, t1w[mask])[0, 1] > 0.9


@pytest.mark.parametrize("problem", ["nan", "grid", "garbage"])
def test_a_bad_map_costs_its_subject_only(tmp_path, rng, problem):
    """NaN in the mask, another grid, or an unreadable file: that subject is left out of the
    voxel-wise harmonization with a one-line reason naming the file; the others are harmonized."""
    bids, out, subjects = _fake_dataset(tmp_path, rng, n_per_site=4)
    bad = derivative_path(
        out, subjects[1], "anat", space="MNI152NLin2009aSym", res=2, label="GM", suffix="probseg"
    )
    img = nib.load(bad)
    data = img.get_fdata().astype(np.float32)
    if problem == "garbage":
        bad.write_bytes(b"not a nifti")
    else:
        if problem == "nan":
            data[45, 54, 45] = np.nan
        else:
            data = data[:-1]
        nib.save(nib.Nifti1Image(data, img.affine), bad)
    config = load_config(None)
    config.gauge.features = ["gm_voxelwise"]
    config.gauge.qc_permutations = 0
    config.dask.scheduler = "threads"
    config.work_dir = str(tmp_path / "work")
    assert run_group(bids, out, subjects, config) == 0
    hdir = out / "group" / "harmonization" / "gm_voxelwise"
    qc = json.loads((hdir / "qc.json").read_text())
    (reason,) = qc["left_out"].values()
    assert list(qc["left_out"]) == [subjects[1]] and str(bad) in reason and "\n" not in reason
    expected = {
        "nan": "1 NaN or Inf voxel",
        "grid": "differs from the mask's",
        "garbage": "cannot read",
    }
    assert expected[problem] in reason
    written = sorted(
        p.name.split("_")[0] for p in hdir.glob("sub-*_desc-harmonized_probseg.nii.gz")
    )
    assert written == sorted(f"sub-{s}" for s in subjects if s != subjects[1])
    assert qc["n_subjects"] == len(subjects) - 1
    assert not list((tmp_path / "work" / "group").rglob("*.npy"))  # scratch matrices removed
