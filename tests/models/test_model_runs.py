"""``models.runs``: several models in the group stage, each with its own option overrides, and
``symprep train --run NAME`` (what the Snakemake train rule calls)."""

from __future__ import annotations

import argparse
import json

import pytest

from pipeline.commands import train
from pipeline.config import validate_config
from pipeline.errors import ConfigError
from pipeline.models.options import ModelOptions


def test_runs_override_the_section_and_name_the_model():
    opts = ModelOptions(
        epochs=7,
        hparams={"widths": [4, 8]},
        runs={"steerable": {}, "vae": {"hparams": {"encoder": "octahedral"}}, "small": {}},
    )
    assert opts.run_names() == ["steerable", "vae", "small"]
    steerable, vae, small = (opts.for_run(n) for n in opts.run_names())
    assert (steerable.model, steerable.epochs, steerable.hparams) == (
        "steerable",
        7,
        {"widths": [4, 8]},
    )
    assert (vae.model, vae.hparams) == ("vae", {"encoder": "octahedral"})  # replaced, not merged
    assert small.model == opts.model == "steerable" and small.runs == {}
    with pytest.raises(KeyError, match="no model run 'cnn'"):
        opts.for_run("cnn")
    # without runs: the one configured model, as before
    assert ModelOptions().run_names() == ["steerable"]
    assert ModelOptions().for_run("steerable") == ModelOptions()


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ({"a/b": {}}, "run name 'a/b'"),
        ({"vae": {"epochz": 2}}, "unknown or disallowed option(s) ['epochz']"),
        ({"vae": {"runs": {}}}, "['runs']"),
        ({"vae": {"epochs": 0}}, "run 'vae': epochs"),
    ],
)
def test_bad_runs_are_config_errors_naming_the_run(runs, message):
    with pytest.raises(ConfigError, match="models.runs") as err:
        validate_config({"models": {"runs": runs}})
    assert message in str(err.value)


def test_train_run_takes_the_run_options_and_folder(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps({"models": {"epochs": 3, "runs": {"vae": {"epochs": 1}, "steerable": {}}}})
    )
    seen = {}

    def fake_train(bids, deriv, out, opts):
        seen.update(out=out, model=opts.model, epochs=opts.epochs, progress=opts.progress)
        return {}

    monkeypatch.setattr("pipeline.models.training.train_from_bids", fake_train)
    parser = argparse.ArgumentParser(prog="symprep")
    train.add_parser(parser.add_subparsers(dest="command"))
    base = ["train", "bids", str(tmp_path / "out"), "--config", str(config), "--no-progress"]
    args = parser.parse_args([*base, "--run", "vae"])
    assert args.func(args) == 0
    assert seen == {
        "out": tmp_path / "out" / "group" / "models" / "vae",
        "model": "vae",
        "epochs": 1,
        "progress": False,
    }
    args = parser.parse_args([*base, "--run", "steerable", "--epochs", "2"])  # flags still win
    assert args.func(args) == 0
    assert (seen["model"], seen["epochs"]) == ("steerable", 2)
    args = parser.parse_args([*base, "--run", "cnn"])
    with pytest.raises(ConfigError, match="no model run 'cnn'"):
        args.func(args)
