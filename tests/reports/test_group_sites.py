"""The group report's harmonization embedding colours every subject by its participants.tsv site,
whatever the label spelling of the harmonization tables (``01`` vs ``sub-01``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.reports._group_data import harmonization_embedding, participants_table
from pipeline.reports._group_figures import site_labels

SUBJECTS = [f"{i:02d}" for i in range(1, 13)]
SITES = dict(zip(SUBJECTS, np.repeat(["siteA", "siteB", "siteC"], 4), strict=True))


def _write(tmp_path, rng, index: list[str]) -> None:
    """Harmonization tables as the gauge stage writes them (bare labels: ``01``, ...)."""
    harm = tmp_path / "out" / "group" / "harmonization"
    harm.mkdir(parents=True)
    cols = [f"gm_block_{i}_0_0" for i in range(10)]
    before = rng.normal(size=(len(index), len(cols)))
    for name, values in (("original", before), ("harmonized", 0.5 * before)):
        frame = pd.DataFrame(values, index=pd.Index(index, name="participant_id"), columns=cols)
        frame.to_csv(harm / f"desc-{name}_features.tsv", sep="\t")
    bids = tmp_path / "bids"
    bids.mkdir()
    rows = ["participant_id\tsite"] + [f"sub-{s}\t{SITES[s]}" for s in SUBJECTS]
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")


def test_embedding_keeps_zero_padded_labels_and_every_site(tmp_path, rng):
    """Bare labels ``01``…``09`` were read as the numbers 1…9 and matched no participant: 9 of
    the 12 demo subjects were coloured ``unknown``."""
    _write(tmp_path, rng, SUBJECTS)
    out = tmp_path / "out"
    sites = participants_table(tmp_path / "bids")["site"]
    for _ in range(2):  # computed, then read back from its cache
        table = harmonization_embedding(out)
        assert list(table.index) == SUBJECTS
        labels = site_labels(table.index, sites)
        assert labels.to_dict() == SITES
    # a cache written by the old reader (labels 1…12) is recomputed, not trusted
    cache = out / "group" / "figures" / "harmonization_embedding.tsv"
    stale = pd.read_csv(cache, sep="\t", dtype={"participant": str})
    stale["participant"] = [str(int(s)) for s in stale["participant"]]
    stale.to_csv(cache, sep="\t", index=False)
    assert list(harmonization_embedding(out).index) == SUBJECTS


def test_site_labels_match_either_spelling_and_flag_the_missing():
    sites = pd.Series({"01": "siteA", "02": "siteB"})
    subjects = pd.Index(["sub-01", "02", "03"])
    assert site_labels(subjects, sites).tolist() == ["siteA", "siteB", "unknown"]
    assert site_labels(subjects, None).tolist() == ["all"] * 3


def test_invariance_section_shows_the_audit_figure_and_its_transforms(tmp_path):
    from pipeline.audit import summarize_audits
    from pipeline.reports import build_group_report

    audit = tmp_path / "sub-01" / "audit"
    audit.mkdir(parents=True)
    pd.DataFrame(
        {
            "subject": ["sub-01"] * 2,
            "output": ["T1w", "mask"],
            "measure": ["rank_correlation", "dice"],
            "residual": [0.01, 0.02],
            "transform": ["g01"] * 2,
            "rotation_deg": [123.4] * 2,
            "translation_mm": [7.2] * 2,
            "gain": [1.3] * 2,
            "gamma": [0.9] * 2,
            "orientation": ["LPS"] * 2,
        }
    ).to_csv(audit / "sub-01_desc-invariance_residuals.tsv", sep="\t", index=False)
    summarize_audits(tmp_path)
    html = build_group_report(tmp_path).read_text()
    section = html.split('id="invariance"')[1].split("</section>")[0]
    assert 'src="audit/invariance_summary.png"' in section
    assert "sub-01 g01: 123° rotation, 7 mm shift, gain 1.30" in section
    assert "invariance_summary.tsv" in section
