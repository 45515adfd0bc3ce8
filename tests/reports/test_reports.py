"""Report builders on synthetic outputs: content, links, methods, degradation, limits."""

from __future__ import annotations

import argparse
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.reports import _synthetic as syn


class _Page(HTMLParser):
    """Collects ids, image attributes, links and table rows of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.imgs: list[dict[str, str]] = []
        self.links: list[str] = []
        self.external: list[str] = []
        self.rows: dict[str, int] = {}
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        for key in ("src", "href"):
            if re.match(r"^(https?:)?//", a.get(key) or ""):
                self.external.append(a[key])
        if tag == "table":
            self._table = a.get("id")
        if tag == "tr" and self._table:
            self.rows[self._table] = self.rows.get(self._table, 0) + 1


def _parse(path: Path) -> tuple[_Page, str]:
    text = path.read_text()
    page = _Page()
    page.feed(text)
    return page, text


def test_subject_report_sections_figures_and_offline(built):
    page, text = _parse(built.subject)
    from pipeline.reports.subject import SECTIONS

    assert set(SECTIONS) <= page.ids
    assert not page.external, page.external
    assert "<script src" not in text and '<link rel="stylesheet"' not in text
    names = {Path(i["src"]).name for i in page.imgs}
    for part in (
        "brainmask",
        "tissues",
        "flickersubject",
        "flickertemplate",
        "biasfield",
        "reference",
        "coreg",
        "motion",
        "carpet",
        "tsnr",
        "confoundcorr",
        "relmat0",
        "harmonization",
    ):
        assert any(f"desc-{part}_" in n for n in names), part
    for img in page.imgs:  # every figure exists beside the HTML with the declared pixel size
        png = built.subject.parent / img["src"]
        head = png.read_bytes()[:24]
        assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (
            int(img["width"]),
            int(img["height"]),
        )
    sub, tmpl = (i for i in page.imgs if "flicker" in i.get("class", ""))
    assert (sub["width"], sub["height"]) == (tmpl["width"], tmpl["height"])
    assert "audit/residuals.tsv" in text and "models/steerable/predictions.tsv" in text
    assert "sub-02" not in text.split('id="invariance"')[1].split("</section>")[0]


def test_methods_paragraph_reflects_what_ran(built):
    text = built.subject.read_text()
    methods = text.split('id="methods-text"')[1].split("</div>")[0]
    assert "N4 (shrink factor 4)" in methods and "antspyx 0.6.3" in methods
    assert "searching 24 rotations" in methods and "random seed 7" in methods
    assert "Atropos" in methods and "CompCor" in methods and "ComBat" in methods
    refs = re.findall(r'<li id="ref-(\w+)">\[(\d+)\]', text)
    assert [int(n) for _, n in refs] == list(range(1, len(refs) + 1))
    keys = {k for k, _ in refs}
    assert {"n4", "ants", "nipype", "atropos", "compcor", "power2012", "combat"} <= keys
    assert "snakemake" not in keys  # no Snakemake run recorded in this output folder


def test_failed_subject_report_degrades(built):
    page, text = _parse(built.failed)
    assert page.imgs == []
    assert "FAILED" in text and "dice=0.5 (needs &gt;= 0.8)" in text
    assert "No anatomical outputs found" in text and "No functional outputs found" in text


def test_group_report_tables(built):
    page, text = _parse(built.group)
    from pipeline.reports.group import SECTIONS

    assert set(SECTIONS) <= page.ids
    assert page.rows["participants-table"] == 1 + 4
    assert page.rows["models-table"] == 2
    assert "../sub-01.html" in page.links and "../sub-04.html" in page.links
    row04 = text.split(">sub-04<")[1].split("</tr>")[0]
    assert 'class="fail"' in row04 and "registration QC failed" in row04
    assert "siteB" in text and "Site prediction before / after ComBat" in text
    # one row per harmonized feature set, read from each set's qc.json
    assert "Harmonized feature sets" in text
    fc_row = text.split(">FC edges<")[1].split("</tr>")[0]
    assert "0.81" in fc_row and "0.47" in fc_row and "0.93" in fc_row
    names = {Path(i["src"]).name for i in page.imgs}
    assert {
        "registration_qc.png",
        "site_prediction.png",
        "harmonization_embedding.png",
        "training_curves.png",
    } <= names
    for img in page.imgs:
        assert (built.group.parent / img["src"]).exists()


def test_embedding_shares_axes(built):
    from pipeline.reports._group_data import harmonization_embedding

    table = harmonization_embedding(built.out)  # cached by the group report
    assert list(table.index) == ["01", "02", "03"]
    assert np.allclose(table[["pc1_before", "pc2_before"]].mean(), 0, atol=1e-9)


def test_bias_estimate_recovers_planted_field(rng):
    from pipeline.reports._anat_figures import estimate_bias

    p = syn.phantom()
    bias = syn.planted_bias()
    field = estimate_bias(p["t1w"] * bias, p["t1w"], p["mask"])
    m = p["mask"] > 0
    assert np.corrcoef(field[m], bias[m] / np.median(bias[m]))[0, 1] > 0.95
    assert np.all(field[~m] == 0)


def test_edges_and_cuts():
    from pipeline.reports._slices import _edges, cut_indices

    square = np.zeros((8, 8), bool)
    square[2:6, 2:6] = True
    assert _edges(square).sum() == 12  # perimeter of a 4x4 block
    vol = np.zeros((10, 12, 14))
    vol[2:8, 3:9, 4:10] = 1
    for axis, cuts in enumerate(cut_indices(vol, 4)):
        lo, hi = (2, 3, 4)[axis], (7, 8, 9)[axis]
        assert np.all((cuts > lo) & (cuts < hi))


def test_page_size_limit(built, monkeypatch):
    from pipeline.errors import StageError
    from pipeline.reports import _render, build_subject_report

    monkeypatch.setattr(_render, "MAX_PAGE_BYTES", 1000)
    with pytest.raises(StageError, match=r"sub-04\.html: .* over the 0 MB limit"):
        build_subject_report(built.out, "04")


def test_reports_command(built, tmp_path):
    from pipeline.commands import reports
    from pipeline.errors import InputError

    parser = argparse.ArgumentParser()
    reports.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["reports", str(built.bids), str(built.out), "--participant-label", "sub-04", "--no-group"]
    )
    before = built.failed.stat().st_mtime_ns
    assert args.func(args) == 0
    assert built.failed.stat().st_mtime_ns > before
    bad = parser.parse_args(
        ["reports", str(built.bids), str(built.out), "--participant-label", "99"]
    )
    with pytest.raises(InputError, match="no outputs for participant"):
        reports.run(bad)
    with pytest.raises(InputError, match="does not exist"):
        reports.run(parser.parse_args(["reports", str(built.bids), str(tmp_path / "nope")]))


def test_embedding_of_regional_features_uses_the_original_table(tmp_path, rng):
    """Regional (non-voxel) features: the 'before' rows come from desc-original_features.tsv and
    both stages are projected on the same axes."""
    from pipeline.reports._group_data import harmonization_embedding

    harm = tmp_path / "group" / "harmonization"
    harm.mkdir(parents=True)
    subjects = pd.Index([f"sub-{i:02d}" for i in range(1, 7)], name="participant_id")
    cols = [f"gm_block_{i}_0_0" for i in range(12)]
    site = np.repeat([0.0, 1.0], 3)[:, None]
    before = rng.normal(size=(6, 12)) + 3.0 * site
    after = before - 3.0 * site
    pd.DataFrame(before, index=subjects, columns=cols).to_csv(
        harm / "desc-original_features.tsv", sep="\t"
    )
    pd.DataFrame(after, index=subjects, columns=cols).to_csv(
        harm / "desc-harmonized_features.tsv", sep="\t"
    )
    table = harmonization_embedding(tmp_path)
    assert list(table.index) == [f"{i:02d}" for i in range(1, 7)]
    mu = before.mean(axis=0)
    v = np.linalg.svd(before - mu, full_matrices=False)[2][:2].T
    np.testing.assert_allclose(
        np.abs(table[["pc1_before", "pc2_before"]]), np.abs((before - mu) @ v)
    )
    # the site split dominates PC1 before and is gone after
    pc1b, pc1a = table["pc1_before"].to_numpy(), table["pc1_after"].to_numpy()
    assert abs(pc1b[:3].mean() - pc1b[3:].mean()) > 3 * abs(pc1a[:3].mean() - pc1a[3:].mean())
