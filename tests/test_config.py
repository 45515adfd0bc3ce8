"""Configuration: documented defaults, strict validation naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import DEFAULT_CONFIG_FILE, load_config, render_config_yaml
from pipeline.errors import ConfigError


def test_shipped_config_is_the_rendered_schema():
    assert DEFAULT_CONFIG_FILE.read_text() == render_config_yaml(), (
        "configs/config.yaml is out of date: regenerate it with `symprep config > configs/config.yaml`"
    )


def test_every_option_is_documented():
    text = render_config_yaml()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if (
            line.strip()
            and not line.lstrip().startswith("#")
            and line.rstrip().endswith(":") is False
        ):
            assert lines[i - 1].lstrip().startswith("#"), f"undocumented option: {line!r}"


def test_defaults_load_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(render_config_yaml())
    assert load_config(path) == load_config(None)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("sed: 1\n", r"unknown key 'sed'"),
        ("anat:\n  resolutoin: 2\n", r"unknown key 'anat.resolutoin'"),
        ("seed: abc\n", r"key 'seed'.*'abc'"),
        ("anat:\n  resolution: 3\n", r"key 'anat.resolution'"),
        ("nprocs: 0\n", r"key 'nprocs'"),
        ("- 1\n- 2\n", r"must be a mapping"),
        ("seed: [1\n", r"invalid YAML at line"),
    ],
)
def test_bad_config_names_the_key(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_command_line_overrides_file(tmp_path):
    path = _write(tmp_path, "seed: 5\nnprocs: 3\n")
    config = load_config(path, seed=7, nprocs=None)
    assert (config.seed, config.nprocs) == (7, 3)


def test_cli_config_check(tmp_path, capsys):
    good = _write(tmp_path, "seed: 4\n")
    assert main(["config", "--check", str(good)]) == 0
    assert "seed: 4" in capsys.readouterr().out
    bad = _write(tmp_path, "seeed: 4\n")
    assert main(["config", "--check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown key 'seeed'" in err
