"""A small synthetic symprep output folder (anat, func, logs, group) for the report tests."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline.anat.synthetic import tissue_phantom  # noqa: E402
from pipeline.data.templates import Template  # noqa: E402
from pipeline.symmetry import BiasField  # noqa: E402

SHAPE = (20, 24, 20)
VOXEL = 8.0
SPACE = "MNI152NLin2009aSym"
SUBJECTS = ("01", "02", "03", "04")  # 04 fails in anat
SITES = {"01": "siteA", "02": "siteA", "03": "siteB", "04": "siteB"}


def _affine(voxel: float = VOXEL, shape=SHAPE) -> np.ndarray:
    aff = np.diag([voxel, voxel, voxel, 1.0])
    aff[:3, 3] = -0.5 * voxel * (np.asarray(shape) - 1)
    return aff


def phantom(shift: float = 0.0, shape=SHAPE) -> dict[str, np.ndarray]:
    """The library's tissue phantom (:func:`pipeline.anat.synthetic.tissue_phantom`) on ``shape``."""
    return tissue_phantom(shape, shift)


#: the bias field planted in the raw T1w: :class:`pipeline.symmetry.BiasField`, the nuisance the
#: audit applies, :math:`\exp(0.3\,x)` with :math:`x \in [-1, 1]` across the first axis
PLANTED_BIAS = BiasField(
    (0.3 * 100.0 / (0.5 * VOXEL * (SHAPE[0] - 1)), 0, 0, 0, 0, 0, 0, 0, 0), (VOXEL,) * 3
)


def planted_bias() -> np.ndarray:
    """The multiplicative field of :data:`PLANTED_BIAS` on the phantom's grid."""
    return PLANTED_BIAS.field(SHAPE)


def small_template() -> Template:
    """A phantom standing in for the MNI template (same grid as the synthetic outputs)."""
    p, aff = phantom(), _affine()

    def img(a):
        return nib.Nifti1Image(np.asarray(a, dtype=np.float32), aff)

    return Template(
        SPACE, 2, img(p["t1w"]), img(p["mask"]), img(p["gm"]), img(p["wm"]), img(p["csf"])
    )


def _save(arr: np.ndarray, path: Path, affine=None, dtype=np.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(np.asarray(arr, dtype=dtype), _affine() if affine is None else affine), path
    )
    return path


def _json(obj, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    return path


def _png(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=50)
    plt.close(fig)
    return path


META = {
    "Software": {"symprep": "0.1.0", "antspyx": "0.6.3", "nipype": "1.9", "nilearn": "0.12"},
    "Parameters": {
        "template": SPACE,
        "resolution": 2,
        "n4": True,
        "n4_shrink_factor": 4,
        "pose_search": True,
        "pose_n_rotations": 24,
        "syn": True,
        "syn_metric": "mattes",
        "rigid_iterations": [50, 25],
        "affine_iterations": [50, 25],
        "syn_iterations": [20, 10],
        "tissue_method": "atropos",
        "qc_min_dice": 0.8,
        "qc_max_folding": 0.001,
    },
    "Seed": 7,
}


def make_anat(out: Path, sub: str, rng: np.random.Generator, passed: bool = True) -> None:
    anat = out / f"sub-{sub}" / "anat"
    p = phantom(shift=0.05 * rng.standard_normal())
    pre = p["t1w"] + rng.normal(0, 10, SHAPE)
    _save(pre, anat / f"sub-{sub}_desc-preproc_T1w.nii.gz")
    _save(p["mask"], anat / f"sub-{sub}_desc-brain_mask.nii.gz", dtype=np.uint8)
    std = f"sub-{sub}_space-{SPACE}_res-2"
    _save(pre, anat / f"{std}_desc-preproc_T1w.nii.gz")
    _json(META, anat / f"{std}_desc-preproc_T1w.json")
    _save(p["mask"], anat / f"{std}_desc-brain_mask.nii.gz", dtype=np.uint8)
    for label in ("GM", "WM", "CSF"):
        _save(p[label.lower()], anat / f"{std}_label-{label}_probseg.nii.gz")
    (anat / f"sub-{sub}_from-T1w_to-{SPACE}_mode-image_xfm.h5").write_bytes(b"\0")
    qc = {
        "subject": sub,
        "mi": 0.6,
        "rank_corr": 0.9 + 0.01 * rng.standard_normal(),
        "dice": 0.95 if passed else 0.5,
        "folding": 0.0,
        "passed": passed,
        "failures": [] if passed else ["dice=0.5 (needs >= 0.8)"],
        "thresholds": {
            "qc_min_mi": 0.3,
            "qc_min_rank_corr": 0.5,
            "qc_min_dice": 0.8,
            "qc_max_folding": 0.001,
        },
    }
    _json(qc, anat / f"sub-{sub}_desc-registration_qc.json")
    (anat / f"sub-{sub}_desc-registration_qc.tsv").write_text("participant_id\tmi\n")
    return pre


def make_func(out: Path, sub: str, rng: np.random.Generator, n_vols: int = 40) -> None:
    func = out / f"sub-{sub}" / "func"
    p = phantom()
    base = f"sub-{sub}_task-rest_space-{SPACE}_res-2"
    _save(p["t1w"] / 2 + rng.normal(0, 5, SHAPE), func / f"{base}_boldref.nii.gz")
    _save(p["mask"], func / f"{base}_desc-brain_mask.nii.gz", dtype=np.uint8)
    _save(p["mask"] * (50 + rng.normal(0, 5, SHAPE)), func / f"{base}_desc-tsnr_boldmap.nii.gz")
    motion = np.cumsum(rng.normal(0, 0.02, (n_vols, 6)), axis=0)
    conf = pd.DataFrame(
        motion, columns=["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]
    )
    conf["framewise_displacement"] = np.r_[np.nan, np.abs(np.diff(motion, axis=0)).sum(1)]
    conf["dvars"] = np.r_[np.nan, rng.uniform(10, 20, n_vols - 1)]
    conf["std_dvars"] = np.r_[np.nan, rng.uniform(0.8, 1.4, n_vols - 1)]
    conf["global_signal"] = rng.normal(size=n_vols)
    for i in range(3):
        conf[f"a_comp_cor_{i:02d}"] = rng.normal(size=n_vols)
    conf["trans_x_derivative1"] = np.r_[np.nan, np.diff(motion[:, 0])]
    conf["motion_outlier_00"] = 0.0
    conf.to_csv(
        func / f"sub-{sub}_task-rest_desc-confounds_timeseries.tsv",
        sep="\t",
        index=False,
        na_rep="n/a",
    )
    _json(
        {
            "Thresholds": {"framewise_displacement": 0.5},
            "Parameters": {"hmc_method": "gauss-newton", "output_resolution": 3},
        },
        func / f"sub-{sub}_task-rest_desc-confounds_timeseries.json",
    )
    carpet = pd.DataFrame(
        {
            f"{t}_{j:04d}": rng.normal(size=n_vols)
            for t, k in (("csf", 5), ("gm", 30), ("wm", 15))
            for j in range(k)
        }
    )
    carpet.to_csv(func / f"sub-{sub}_task-rest_desc-carpet_timeseries.tsv", sep="\t", index=False)
    ts = rng.normal(size=(n_vols, 12))
    rel = pd.DataFrame(np.corrcoef(ts.T), columns=[f"roi{i}" for i in range(12)])
    rel.to_csv(
        func
        / f"sub-{sub}_task-rest_space-{SPACE}_atlas-power2011_meas-PearsonCorrelation_desc-simple_relmat.tsv",
        sep="\t",
        index=False,
    )
    _json(
        {
            "n_volumes": n_vols,
            "fd_mean": float(np.nanmean(conf["framewise_displacement"])),
            "pct_outliers": 2.5,
            "tsnr_median": 50.0,
        },
        func / f"sub-{sub}_task-rest_desc-func_qc.json",
    )


def make_bids(bids: Path, raw: dict[str, np.ndarray]) -> None:
    bids.mkdir(parents=True, exist_ok=True)
    rows = ["participant_id\tsite\tage"] + [
        f"sub-{s}\t{SITES[s]}\t{20 + i}" for i, s in enumerate(SUBJECTS)
    ]
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    bias = planted_bias()
    for sub, t1 in raw.items():
        _save(t1 * bias, bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz")


def make_group(out: Path, rng: np.random.Generator) -> None:
    group = out / "group"
    harm = group / "harmonization"
    mask = phantom()["mask"] > 0
    ok = [s for s in SUBJECTS if s != "04"]
    feats = pd.DataFrame(
        rng.uniform(0, 1, (len(ok), int(mask.sum()))), index=[f"sub-{s}" for s in ok]
    )
    feats.index.name = "participant_id"
    harm.mkdir(parents=True, exist_ok=True)
    feats.to_csv(harm / "desc-harmonized_features.tsv", sep="\t", float_format="%.3f")
    pd.DataFrame(
        {
            "stage": ["before", "after"],
            "balanced_accuracy": [0.9, 0.5],
            "chance": [0.5, 0.5],
            "p_value": [0.01, 0.6],
            "n_splits": [5, 5],
        }
    ).to_csv(harm / "site_prediction.tsv", sep="\t", index=False)
    pd.DataFrame({"effect": ["age"], "corr_before_after": [0.97]}).to_csv(
        harm / "effects.tsv", sep="\t", index=False
    )
    (harm / "fc").mkdir(exist_ok=True)
    _json(
        {
            "n_subjects": 3,
            "n_features": 45,
            "site_prediction": {
                "before": {"balanced_accuracy": 0.81, "chance": 0.5, "p_value": 0.02},
                "after": {"balanced_accuracy": 0.47, "chance": 0.5, "p_value": 0.7},
            },
            "effects": [{"term": "age", "t_map_correlation": 0.93}],
        },
        harm / "fc" / "qc.json",
    )
    _json(
        {
            "n_subjects": 3,
            "n_training_subjects": 3,
            "n_features": int(mask.sum()),
            "sites": ["siteA", "siteB"],
            "options": {"parametric": True, "eb": True},
        },
        harm / "qc.json",
    )
    for name in ("site_prediction", "effect_maps", "site_pc1"):
        _png(harm / f"{name}.png")
    status = (
        ["participant\tstatus\tstage\terror"]
        + [f"{s}\tok\t\t" for s in ok]
        + ["04\tfailed\tanat\tsub-04: registration QC failed"]
    )
    (group / "participants_status.tsv").write_text("\n".join(status) + "\n")
    _json(
        {
            "n_subjects": 4,
            "n_usable": 3,
            "left_out": ["04"],
            "stages": {"harmonization": {"status": "ok"}},
        },
        group / "group_summary.json",
    )
    mdir = group / "models" / "steerable"
    hist = [
        {"epoch": e, "train_loss": 1.0 / (e + 1), "test_accuracy": 0.5 + 0.1 * e} for e in range(3)
    ]
    _json(
        {
            "model": "steerable",
            "n_parameters": 1234,
            "device": "cpu",
            "task": "classification",
            "epochs": 3,
            "history": hist,
            "train": {"accuracy": 0.9},
            "test": {"accuracy": 0.7},
        },
        mdir / "metrics.json",
    )
    pd.DataFrame(hist).to_csv(mdir / "log.csv", index=False)
    pd.DataFrame(
        {"participant_id": [f"sub-{s}" for s in ok], "y_true": [0, 1, 0], "y_pred": [0, 1, 1]}
    ).to_csv(mdir / "predictions.tsv", sep="\t", index=False)
    audit = group / "audit"
    audit.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "participant_id": ["sub-01", "sub-01", "sub-02"],
            "transform": ["rot", "gauge", "rot"],
            "residual": [0.01, 0.02, 0.015],
        }
    ).to_csv(audit / "residuals.tsv", sep="\t", index=False)


def make_outputs(root: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a BIDS folder and an output folder under ``root``; return (bids_dir, output_dir)."""
    rng = np.random.default_rng(seed)
    bids, out = root / "bids", root / "out"
    raw = {}
    for sub in SUBJECTS[:3]:
        raw[sub] = make_anat(out, sub, rng)
    make_func(out, "01", rng)
    make_bids(bids, raw)
    _json(
        {
            "Name": "symprep derivatives",
            "DatasetType": "derivative",
            "SourceDatasets": [{"URL": bids.resolve().as_uri()}],
        },
        out / "dataset_description.json",
    )
    logs = out / "logs"
    for sub in SUBJECTS[:3]:
        _json(
            {
                "subject": f"sub-{sub}",
                "status": "ok",
                "symprep_version": "0.1.0",
                "seed": 7,
                "seconds": 12.5,
                "outputs": {},
            },
            logs / f"sub-{sub}_participant.json",
        )
    _json(
        {
            "subject": "sub-04",
            "status": "failed",
            "stage": "anat",
            "error": "sub-04: registration QC failed: dice=0.5 (needs >= 0.8)",
        },
        logs / "sub-04_failure.json",
    )
    make_group(out, rng)
    return bids, out
