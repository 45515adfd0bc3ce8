"""The subject report's stage sections come from the stage registry."""

from __future__ import annotations

import pytest

from pipeline.reports import subject
from pipeline.workflows.stages import STAGES, Stage


def test_every_registered_stage_has_its_section_and_a_builder():
    shown = [s.report_section for s in STAGES.values() if s.report_section]
    assert shown == ["anatomical", "functional"]
    assert all(section in subject.SECTIONS for section in shown)
    assert set(shown) <= set(subject.STAGE_SECTION_BUILDERS)


def test_a_stage_section_nothing_builds_is_refused(tmp_path, monkeypatch):
    (tmp_path / "sub-01").mkdir()
    dwi = Stage(name="dwi", section="dwi", run=lambda ctx: {}, report_section="diffusion")
    monkeypatch.setitem(STAGES, "dwi", dwi)
    with pytest.raises(ValueError, match="report section 'diffusion'"):
        subject.build_subject_report(tmp_path, "01")
    # with a builder, its section is built (here: nothing to show)
    monkeypatch.setitem(subject.STAGE_SECTION_BUILDERS, "diffusion", lambda *a: (None, []))
    assert subject.build_subject_report(tmp_path, "01").is_file()
