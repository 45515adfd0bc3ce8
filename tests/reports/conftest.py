"""Synthetic outputs and reports built once per test session (figures are the slow part)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reports import _synthetic as syn


@dataclass
class Built:
    bids: Path
    out: Path
    subject: Path
    failed: Path
    group: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    from pipeline.reports import _group_data, build_group_report, build_subject_report

    root = tmp_path_factory.mktemp("reports")
    bids, out = syn.make_outputs(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_group_data, "template", lambda res: syn.small_template())
        subject = build_subject_report(out, "01", bids)
        failed = build_subject_report(out, "04")
        group = build_group_report(out)
    return Built(bids, out, subject, failed, group)
