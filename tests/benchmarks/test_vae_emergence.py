"""A small version of ``benchmarks/vae_emergence.py`` (issue 20): every measure is computed and
finite, the invariants that hold by construction hold, and the report and figure are written.
The benchmark, not this test, carries the conclusion."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks import vae_emergence as bench

MEASURES = ("spread", "rotation", "rotation_floor", "translation", "translation_floor", "gain",
            "contrast", "bias_field", "lie", "recon", "site_ba")  # fmt: skip


@pytest.fixture(scope="module")
def sweep():
    torch.set_num_threads(1)
    scale = dataclasses.replace(
        bench.SCALES["test"], voxel_mm=20.0, side=9, n_train=8, n_test=6, latents=(2, 4),
        noises=(0.5,), widths=(2, 4, 4), n_transforms=1,
    )  # fmt: skip
    return scale, bench.run_sweep(scale, progress=False)


def test_every_measure_is_computed_and_finite(sweep):
    scale, payload = sweep
    rows = payload["rows"]
    assert len(rows) == len(bench.settings(scale)) * scale.seeds == 3
    assert {r["encoder"] for r in rows} == {"cnn", "octahedral"}
    for r in rows:
        values = [r[m] for m in MEASURES]
        assert np.isfinite(values).all(), r
        assert r["spread"] > 0 and r["recon"] > 0 and 0 <= r["site_ba"] <= 1
        # a gain is removed by the normalisation before the encoder: exact by construction
        assert r["gain"] < 1e-5, r
        assert r["rotation_floor"] >= 0 and r["translation_floor"] >= 0


def test_cohort_carries_site_gauges_and_the_normalisation_removes_gain():
    scale = dataclasses.replace(bench.SCALES["test"], voxel_mm=20.0, side=9)
    cohort = bench.make_cohort(scale, 6, seed=1)
    assert cohort.raw.shape == (6, 1, 9, 9, 9) and set(cohort.sites) == {"siteA", "siteB"}
    assert (cohort.raw >= 0).all() and (cohort.raw > 0).any()
    x = bench.normalize(cohort.raw)
    assert torch.allclose(bench.normalize(3.0 * cohort.raw), x, atol=1e-6)
    # a power-law contrast change is not removed
    assert not torch.allclose(bench.normalize(cohort.raw**1.3), x, atol=1e-3)


def test_paired_statistics_and_report(sweep, tmp_path):
    scale, payload = sweep
    m, lo, hi = bench.paired_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and lo < 2.0 < hi
    assert bench._verdict(-1.0, -2.0, -0.5) == "falls" and bench._verdict(1, 0.5, 2) == "rises"
    pairs = bench._pairs(payload["rows"], "latent", 2, 4, "recon")
    assert len(pairs) == 1  # matched on seed, beta and noise
    text = bench.report(payload)
    assert "| cnn | 2 | 1 | 0.5 |" in text and "d = 2 − d = 4" in text
    assert "The seed's claim" in text and "`octahedral` − `cnn`" in text
    png = bench.figure(payload, tmp_path / "fig.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_cohort_reads_template_space_outputs_with_their_sites(tmp_path):
    import nibabel as nib

    from pipeline.models.data import DEFAULT_PATTERN

    bids, deriv = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    rows = ["participant_id\tsite"]
    for i in range(4):
        rows.append(f"sub-{i:02d}\tsite{'AB'[i % 2]}")
        path = deriv / DEFAULT_PATTERN.format(label=f"{i:02d}")
        path.parent.mkdir(parents=True)
        data = np.zeros((12, 14, 10), np.float32)
        data[2:10, 3:11, 2:8] = float(i + 1)
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    cohort = bench.load_demo_cohort(bids, deriv, downsample=2, seed=0)
    assert cohort.raw.shape == (4, 1, 9, 9, 9)  # 7 -> centred cube side 9
    # the shuffle keeps each volume with its own site
    for v, site in zip(cohort.raw, cohort.sites, strict=True):
        assert site == f"site{'AB'[(int(v.max()) - 1) % 2]}"
