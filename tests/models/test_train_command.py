"""``symprep train`` end to end on a tiny BIDS + derivatives folder."""

from __future__ import annotations

import argparse
import json

import nibabel as nib
import numpy as np
import pytest

from pipeline.commands import train
from pipeline.errors import ConfigError

PATTERN = "sub-{label}/anat/sub-{label}_space-MNI152NLin2009aSym_res-2_desc-preproc_T1w.nii.gz"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="symprep")
    train.add_parser(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture
def dataset(tmp_path, rng):
    bids, deriv = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    rows = ["participant_id\tsite\tage\tsex\tdiagnosis"]
    for i in range(8):
        label, diag = f"{i:02d}", ("ASD", "TD")[i % 2]
        rows.append(f"sub-{label}\t{'AB'[i // 4]}\t{20 + i}\tF\t{diag}")
        data = np.zeros((11, 12, 10), np.float32)
        data[2:9, 2:10, 2:8] = rng.uniform(1, 2, (7, 8, 6)) + (diag == "ASD")
        path = deriv / PATTERN.format(label=label)
        path.parent.mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    return bids, deriv


def test_train_command_writes_results(dataset, tmp_path):
    bids, deriv = dataset
    out = tmp_path / "model"
    args = _parser().parse_args(
        ["train", str(bids), str(deriv), "--output-dir", str(out), "--model", "cnn",
         "--epochs", "2", "--downsample", "1", "--split", "leave-site-out", "--test-sites", "B",
         "--hparams", '{"widths": [4, 8]}', "--no-progress", "--device", "cpu"]
    )  # fmt: skip
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["ASD", "TD"] and len(metrics["history"]) == 2
    split = (out / "split.tsv").read_text().splitlines()
    assert sum(r.endswith("\ttest") for r in split) == 4 and all(
        r.split("\t")[1] == "B" for r in split if r.endswith("\ttest")
    )


def test_train_command_rejects_bad_options(dataset):
    bids, deriv = dataset
    args = _parser().parse_args(["train", str(bids), str(deriv), "--epochs", "0"])
    with pytest.raises(ConfigError, match="invalid train option: epochs"):
        args.func(args)


def test_config_models_section_is_the_base_and_flags_override(dataset, tmp_path):
    """What the Snakemake train rule relies on: every models: option (hparams included) comes from
    the run's configuration file; a flag still wins."""
    from pipeline.models import build_model

    bids, deriv = dataset
    config = tmp_path / "config.yaml"
    config.write_text(
        "models:\n  model: cnn\n  epochs: 3\n  downsample: 1\n  device: cpu\n"
        "  hparams: {widths: [3, 5]}\n  split: leave-site-out\n  test_sites: [B]\n"
    )
    out = tmp_path / "model"
    args = _parser().parse_args(
        ["train", str(bids), str(deriv), "--output-dir", str(out), "--config", str(config),
         "--epochs", "1", "--no-progress"]
    )  # fmt: skip
    assert args.func(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 1  # the flag overrode epochs: 3
    expected = sum(p.numel() for p in build_model("cnn", 1, 2, widths=[3, 5]).parameters())
    assert metrics["n_parameters"] == expected  # hparams from the file reached the model
