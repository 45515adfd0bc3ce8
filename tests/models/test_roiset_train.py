"""``symprep train --model roiset``: leave-site-out CV with ComBat inside the training folds and
the baselines, on generated symprep derivatives and on an ABIDE-Preprocessed tree fetched from
the local test server of ``fetch-abide``'s tests."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.commands import train
from pipeline.errors import InputError
from pipeline.models.roi_data import load_abide_rois
from pipeline.models.roi_experiment import harmonize_fold
from pipeline.outputs import ROI_OUTPUTS, output_path

N_ROI, SITES, PER_SITE = 10, ("A", "B", "C"), 8


def _series(rng: np.random.Generator, asd: bool, site: int, t: int = 80) -> np.ndarray:
    """ROI series whose ROIs 0-4 share a network signal, weaker in ASD; a site gain on ROI 9."""
    shared = rng.normal(size=(t, 1))
    x = rng.normal(size=(t, N_ROI))
    x[:, :5] += (0.4 if asd else 1.6) * shared
    x[:, 9] *= 1.0 + site
    return x


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symprep")
    train.add_parser(parser.add_subparsers(dest="command"))
    return parser


def _write_derivatives(tmp_path, rng, per_site: int):
    """A BIDS folder (participants.tsv) and symprep ROI series of atlas ``Toy``."""
    bids, deriv = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    rows = ["participant_id\tsite\tage\tsex\tdiagnosis"]
    for s, site in enumerate(SITES):
        for i in range(per_site):
            label, asd = f"{site}{i:02d}", i % 2 == 0
            rows.append(
                f"sub-{label}\t{site}\t{20 + i}\t{'FM'[i % 3 == 0]}\t{'ASD' if asd else 'TD'}"
            )
            frame = pd.DataFrame(
                _series(rng, asd, s), columns=[f"roi{j + 1:03d}" for j in range(N_ROI)]
            )
            frame["roi004"] = np.nan if label == "A00" else frame["roi004"]  # outside the mask
            path = output_path(
                ROI_OUTPUTS["timeseries"], deriv, {"sub": label, "task": "rest"},
                atlas="Toy", desc="filtnoglobal",
            )  # fmt: skip
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path, sep="\t", index=False, na_rep="n/a")
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    return bids, deriv


@pytest.fixture
def derivatives(tmp_path, rng):
    return _write_derivatives(tmp_path, rng, PER_SITE)


def test_train_roiset_on_symprep_derivatives(derivatives, tmp_path):
    bids, deriv = derivatives
    out = tmp_path / "roiset"
    args = _parser().parse_args(
        ["train", str(bids), str(deriv), "--model", "roiset", "--atlas", "Toy",
         "--output-dir", str(out), "--epochs", "25", "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_rois"] == N_ROI - 1  # the ROI missing in one subject is dropped for all
    assert [f["site"] for f in metrics["folds"]] == list(SITES)
    for fold in metrics["folds"]:
        # ComBat fitted on the training fold only; the held-out site mapped afterwards
        assert fold["site"] not in fold["harmonization"]["fitted_sites"]
        assert fold["harmonization"]["test_harmonized"] is True
        assert fold["roiset"]["permutation_error"] <= 1e-5
    overall = metrics["overall"]
    assert set(overall) == {"roiset", "tangent_logreg", "flat_mlp"}
    assert all(v["n"] == len(SITES) * PER_SITE for v in overall.values())
    # the planted network effect is found across sites
    assert overall["tangent_logreg"]["accuracy"] >= 0.8
    assert overall["roiset"]["accuracy"] > metrics["chance"]
    preds = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert len(preds) == 3 * len(SITES) * PER_SITE and (preds["site"] == preds["fold"]).all()
    assert (out / "fold-A" / "roiset" / "log.csv").exists()


def test_train_roiset_with_four_subjects_per_site(tmp_path, rng, caplog):
    """``make demo``'s size: 4 subjects per site, fewer than ComBat's unseen-site minimum (5).
    Every held-out site is harmonized anyway (with a warning), not left in raw units. Run as the
    demo's Snakemake rule runs it (``--config``, ``--run roiset``): the run's own epochs win over
    the ROI models' defaults, which replace the volume models' (batch size)."""
    bids, deriv = _write_derivatives(tmp_path, rng, 4)
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps({"models": {"epochs": 20, "batch_size": 2, "device": "cpu",
                               "runs": {"roiset": {"model": "roiset", "epochs": 3}}}})
    )  # fmt: skip
    args = _parser().parse_args(
        ["train", str(bids), str(deriv), "--config", str(config), "--run", "roiset",
         "--atlas", "Toy", "--no-progress"]
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="pipeline.models.roi_experiment"):
        assert args.func(args) == 0
    out = deriv / "group" / "models" / "roiset"  # where the group report finds it
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["options"]["epochs"] == 3 and metrics["options"]["batch_size"] == 32
    assert [f["site"] for f in metrics["folds"]] == list(SITES)
    for fold in metrics["folds"]:
        harm = fold["harmonization"]
        assert harm["test_harmonized"] is True and harm["below_minimum"] == [fold["site"]]
        assert fold["site"] not in harm["fitted_sites"]
    assert all(v["n"] == 4 * len(SITES) for v in metrics["overall"].values())
    assert "below ComBat's unseen-site minimum of 5 subjects" in caplog.text
    assert "left unharmonized" not in caplog.text


def test_a_small_held_out_site_gets_its_offset_removed(rng):
    """Four subjects of an unseen site: their site offset (5, on every feature) is estimated and
    removed; a site of one subject (no variance) is the only one left as it is."""
    train_x = rng.normal(size=(16, 300)) + np.repeat([0.0, 2.0], 8)[:, None]
    sites = np.repeat(["a", "b"], 8)
    test_x = rng.normal(size=(4, 300)) + 5.0
    a, b, info = harmonize_fold(train_x, sites, test_x, np.array(["c"] * 4))
    assert info["test_harmonized"] and info["below_minimum"] == ["c"]
    assert abs(b.mean() - a.mean()) < 0.2  # from 4 away
    assert abs(b.std() / a.std() - 1) < 0.2
    _, b1, info1 = harmonize_fold(train_x, sites, test_x[:1], np.array(["c"]))
    assert info1["test_harmonized"] is False and "below_minimum" not in info1
    np.testing.assert_array_equal(b1, test_x[:1])


def test_combat_in_a_fold_never_sees_the_held_out_site(rng):
    train_x = rng.normal(size=(12, 6)) + np.repeat([0.0, 2.0], 6)[:, None]
    sites = np.repeat(["a", "b"], 6)
    test_x = rng.normal(size=(6, 6)) + 5.0
    a, b, info = harmonize_fold(train_x, sites, test_x, np.array(["c"] * 6))
    a2, _, _ = harmonize_fold(train_x, sites, test_x * 10 - 3, np.array(["c"] * 6))
    np.testing.assert_array_equal(a, a2)  # the training output does not depend on the test site
    assert info["fitted_sites"] == ["a", "b"] and info["test_harmonized"]
    assert abs(b.mean() - a.mean()) < 1.0  # while the test site's offset of 5 is removed


# --------------------------------------------------------------------------- ABIDE Preprocessed
PCP = "data/Projects/ABIDE_Initiative"


def _pcp_bucket(rng: np.random.Generator) -> dict[str, bytes]:
    qc = "qc_rater_1,qc_anat_rater_2,qc_func_rater_2,qc_anat_rater_3,qc_func_rater_3"
    lines = [f",SUB_ID,FILE_ID,SITE_ID,DX_GROUP,AGE_AT_SCAN,SEX,{qc}"]
    files: dict[str, bytes] = {}
    k = 0
    for s, site in enumerate(("NYU", "UM", "USM")):
        for i in range(6):
            k += 1
            fid = f"{site}_{50000 + k:07d}"
            dx = 1 + i % 2
            lines.append(f"{k},{50000 + k},{fid},{site},{dx},{12 + i},{1 + i % 2},{'OK,' * 4}OK")
            x = _series(rng, dx == 1, s, t=60)
            header = "\t".join(f"#{2000 + j}" for j in range(N_ROI))
            body = "\n".join("\t".join(f"{v:.5f}" for v in row) for row in x)
            files[f"{PCP}/Outputs/cpac/nofilt_noglobal/rois_cc200/{fid}_rois_cc200.1D"] = (
                f"{header}\n{body}\n".encode()
            )
    lines.append(f"99,59999,no_filename,NYU,1,10,1,{'OK,' * 4}OK")
    files[f"{PCP}/Phenotypic_V1_0b_preprocessed1.csv"] = ("\n".join(lines) + "\n").encode()
    return files


@pytest.fixture
def pcp_server(rng):
    import threading
    from http.server import ThreadingHTTPServer

    from data.test_abide import _Handler  # the local S3-like server of fetch-abide's tests

    _Handler.files = _pcp_bucket(rng)
    _Handler.log, _Handler.cut_once, _Handler.corrupt = [], set(), set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_train_roiset_on_fetched_abide_preprocessed(pcp_server, tmp_path):
    abide = tmp_path / "abide"
    for site in ("NYU", "UM", "USM"):
        code = main(
            ["fetch-abide", str(abide), "--site", site, "--preprocessed",
             "--derivatives", "rois_cc200", "--base-url", pcp_server]
        )  # fmt: skip
        assert code == 0
    on_disk = sorted(p.name for p in abide.rglob("*.1D"))
    assert len(on_disk) == 18 and on_disk[0] == "NYU_0050001_rois_cc200.1D"
    data = load_abide_rois(abide)
    assert list(data.target[:2]) == ["ASD", "TD"] and data.roi_names[0] == "2000"
    out = tmp_path / "model"
    code = main(
        ["train", str(abide), str(abide), "--model", "roiset", "--output-dir", str(out),
         "--epochs", "3", "--no-progress", "--device", "cpu", "--baselines", "tangent_logreg"]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["source"].startswith("ABIDE Preprocessed cpac/nofilt_noglobal rois_cc200")
    assert metrics["sites"] == ["NYU", "UM", "USM"] and metrics["classes"] == ["ASD", "TD"]
    assert set(metrics["overall"]) == {"roiset", "tangent_logreg"}
    assert metrics["overall"]["tangent_logreg"]["accuracy"] >= 0.8


def test_bad_abide_tree_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(InputError, match="phenotypic"):
        load_abide_rois(tmp_path)
    root = tmp_path / "ABIDE_pcp"
    (root / "cpac/nofilt_noglobal").mkdir(parents=True)
    (root / "Phenotypic_V1_0b_preprocessed1.csv").write_text(
        ",SUB_ID,FILE_ID,SITE_ID,DX_GROUP\n1,1,NYU_1,NYU,1\n2,2,UM_2,UM,2\n"
    )
    (root / "cpac/nofilt_noglobal/NYU_1_rois_cc200.1D").write_text("#1 #2\n0.1 oops\n")
    code = main(["train", str(tmp_path), str(tmp_path), "--model", "roiset"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "\n" not in err and "NYU_1_rois_cc200.1D" in err
