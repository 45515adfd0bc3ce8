"""The group report shows the leave-site-out accuracy of ``symprep train --model roiset`` beside
its baselines when the run's outputs are under ``group/models/``, and no such section otherwise."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from pipeline.models.options import ModelOptions
from pipeline.models.roi_data import RoiData
from pipeline.models.roi_experiment import RoiExperiment, run_roi_experiment
from pipeline.reports import build_group_report
from pipeline.reports._tables import fmt

SITES, N_ROI = {"A": 4, "B": 6, "C": 10}, 6  # unequal sites: pooled accuracy != fold mean


def _tiny_rois(rng: np.random.Generator) -> RoiData:
    """Three sites of 4-10 subjects; ROIs 0-2 share a signal, weaker in ASD."""
    subjects, sites, target, series = [], [], [], []
    for site, n in SITES.items():
        for i in range(n):
            asd = i % 2 == 0
            x = rng.normal(size=(60, N_ROI))
            x[:, :3] += (0.6 if asd else 1.2) * rng.normal(size=(60, 1))
            subjects.append(f"sub-{site}{i:02d}")
            sites.append(site)
            target.append("ASD" if asd else "TD")
            series.append(x)
    return RoiData(
        subjects=subjects,
        sites=np.array(sites),
        target=np.array(target),
        timeseries=series,
        roi_names=[f"roi{j}" for j in range(N_ROI)],
        coords=None,
        source="tiny test ROIs",
    )


@pytest.fixture(scope="module")
def roiset_outputs(tmp_path_factory):
    """An output folder with a (two-epoch) roiset run where ``symprep train`` writes it."""
    out = tmp_path_factory.mktemp("roiset_report")
    opts = ModelOptions(
        model="roiset", epochs=2, batch_size=4, device="cpu", progress=False, seed=0
    )
    metrics = run_roi_experiment(
        _tiny_rois(np.random.default_rng(0)),
        out / "group" / "models" / "roiset",
        opts,
        RoiExperiment(harmonize=False),
    )
    return out, metrics


def _table(html: str, table_id: str) -> list[dict[str, str]]:
    """The rows of table ``table_id`` as {column header: cell text}."""
    body = html.split(f'id="{table_id}"')[1].split("</table>")[0]
    header = re.findall(r"<th[^>]*>(.*?)</th>", body)
    rows = re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)[1:]
    cells = [
        [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)] for r in rows
    ]
    return [dict(zip(header, c, strict=True)) for c in cells]


def test_group_report_shows_roiset_beside_the_baselines(roiset_outputs):
    out, metrics = roiset_outputs
    html = build_group_report(out).read_text()
    section = html.split('id="models"')[1].split("</section>")[0]
    assert 'id="roi-models"' in section
    rows = _table(section, "roi-table")
    assert len(rows) == 3  # roiset and the two baselines
    for label, key in (
        ("roiset (set model on FC)", "roiset"),
        ("tangent FC + logistic regression", "tangent_logreg"),
        ("MLP on flattened FC", "flat_mlp"),
    ):
        (row,) = [r for r in rows if r["model"] == label]
        res = metrics["overall"][key]  # as metrics.json has it
        assert row["leave-site-out accuracy"] == fmt(res["accuracy"])
        assert row["balanced accuracy"] == fmt(res["balanced_accuracy"])
        assert row["fold accuracy mean"] == fmt(res["fold_accuracy_mean"])
        assert row["held-out subjects"] == str(sum(SITES.values()))
    folds = _table(section, "roi-folds-table")
    assert [f["held-out site"] for f in folds] == list(SITES)
    for fold, row in zip(metrics["folds"], folds, strict=True):
        assert row["n"] == str(SITES[fold["site"]])
        assert row["MLP on flattened FC"] == fmt(fold["flat_mlp"]["accuracy"])
        assert row["roiset (set model on FC)"] == fmt(fold["roiset"]["accuracy"])
    png = out / "group" / "figures" / "roi_leave_site_out.png"
    assert png.exists() and 'src="figures/roi_leave_site_out.png"' in section


def test_no_roiset_section_without_its_outputs(roiset_outputs, tmp_path):
    out, _ = roiset_outputs
    # another kind of run only (a random split): the models table, no ROI section
    run = tmp_path / "group" / "models" / "cnn"
    run.mkdir(parents=True)
    metrics = json.loads((out / "group" / "models" / "roiset" / "metrics.json").read_text())
    metrics.update(split="random", model="cnn")
    (run / "metrics.json").write_text(json.dumps(metrics))
    html = build_group_report(tmp_path).read_text()
    assert 'id="models-table"' in html
    assert 'id="roi-models"' not in html and "roi_leave_site_out.png" not in html
    empty = tmp_path / "empty"
    empty.mkdir()
    html = build_group_report(empty).read_text()
    assert 'id="roi-models"' not in html and "No trained models found" in html
