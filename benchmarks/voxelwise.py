"""Voxel-wise harmonization of template-space GM maps: the group stage on a dask cluster vs in memory.

Both runs start from the same NIfTI maps on disk (2 mm MNI152NLin2009aSym grid, every voxel of
the template brain mask, sites with different gains and offsets, age and sex covariates) and end
with one harmonized NIfTI per subject:

* **dask** — :func:`pipeline.gauge._voxelwise.run_voxelwise_harmonization` with a local dask
  cluster (2 worker processes, ``--worker-memory`` each): workers read and write the maps, the
  group process streams ComBat over voxel blocks of a memory-mapped matrix;
* **in memory** — the plain way: load every map into one float64 matrix, ``ComBat`` on it in
  memory, write the maps one by one.

Each run is a child process reporting its wall time and peak resident memory (``VmHWM``), plus
the workers' peaks for the dask run. The harmonized maps of both runs are compared voxel by voxel.

Usage: ``python -m benchmarks.voxelwise [--subjects 400] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("benchmarks.voxelwise")

SITES = ("A", "B", "C", "D", "E")


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def generate(root: Path, n: int) -> None:
    """Write ``n`` GM maps (site gain/offset, age effect, noise) and ``participants.tsv``."""
    import nibabel as nib
    import pandas as pd
    from tqdm.auto import tqdm

    from pipeline.data.templates import load_template

    template = load_template(2)
    gm = template.gm.get_fdata().astype(np.float32)
    rng = np.random.default_rng(0)
    rows = []
    for i in tqdm(range(n), desc="generate maps", unit="subject"):
        site = SITES[i % len(SITES)]
        k = SITES.index(site)
        age = float(rng.uniform(8, 50))
        data = gm * (1 + 0.1 * k) + 0.03 * k + 0.002 * age * gm
        data += rng.normal(0, 0.02, gm.shape).astype(np.float32)
        sub = f"{i:04d}"
        rows.append({"participant": sub, "site": site, "age": age, "sex": "FM"[i % 2]})
        nib.save(nib.Nifti1Image(data, template.t1w.affine), root / f"sub-{sub}_GM.nii.gz")
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)


def _inputs(root: Path):  # noqa: ANN202
    import pandas as pd

    from pipeline.data.templates import load_template
    from pipeline.gauge import GaugeOptions

    parts = pd.read_csv(root / "participants.tsv", sep="\t", dtype={"participant": str})
    parts = parts.set_index("participant")
    maps = {s: root / f"sub-{s}_GM.nii.gz" for s in parts.index}
    options = GaugeOptions(qc_permutations=0, qc_max_features=2000)
    return maps, load_template(2).mask, parts, options


def child(kind: str, root: Path, out: Path, worker_memory: str) -> None:
    """One timed run in this process; prints a JSON report."""
    import nibabel as nib

    maps, mask, parts, options = _inputs(root)
    t0 = time.perf_counter()
    workers_peak = []
    if kind == "dask":
        from pipeline.dask_cluster import DaskOptions, dask_client
        from pipeline.gauge._voxelwise import run_voxelwise_harmonization

        with dask_client(DaskOptions(n_workers=2, memory_limit=worker_memory)) as client:
            run_voxelwise_harmonization(
                maps, mask, parts, options, out, root / "work", seed=0, client=client
            )
            workers_peak = list(client.run(_peak_mb).values())
    else:
        from pipeline.gauge import ComBat
        from pipeline.gauge._run import write_quality_control

        index = np.asarray(mask.get_fdata()) > 0.5
        X = np.stack(
            [np.asarray(nib.load(p).dataobj, dtype=np.float64)[index] for p in maps.values()]
        )
        site = parts["site"].to_numpy(dtype=object)
        model = ComBat()
        harmonized = model.fit_transform(X, site, parts[["age", "sex"]].reset_index(drop=True))
        out.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(maps):
            vol = np.zeros(index.shape, np.float32)
            vol[index] = harmonized[i]
            nib.save(nib.Nifti1Image(vol, mask.affine), out / f"sub-{s}_harmonized.nii.gz")
        cols = np.sort(np.random.default_rng(0).choice(X.shape[1], 2000, replace=False))
        write_quality_control(
            X[:, cols], harmonized[:, cols], parts, np.ones(len(parts), bool), site, options,
            model, out, 0, {},
        )  # fmt: skip
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb(),
                      "workers_peak_mb": workers_peak}))  # fmt: skip


def run_child(kind: str, root: Path, out: Path, worker_memory: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.voxelwise", "--child", kind, "--root", str(root),
         "--out", str(out), "--worker-memory", worker_memory],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed: {proc.stderr[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    log.info("%s: %.1f s, %.0f MB", kind, report["seconds"], report["peak_mb"])
    return report


def max_abs_diff(dask_out: Path, memory_out: Path) -> float:
    import nibabel as nib

    worst = 0.0
    for a in sorted(dask_out.glob("sub-*_desc-harmonized_probseg.nii.gz")):
        sub = a.name.split("_")[0]
        b = memory_out / f"{sub}_harmonized.nii.gz"
        diff = np.abs(nib.load(a).get_fdata() - nib.load(b).get_fdata()).max()
        worst = max(worst, float(diff))
    return worst


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=400)
    parser.add_argument("--quick", action="store_true", help="40 subjects (a smoke run)")
    parser.add_argument("--worker-memory", default="1GB")
    parser.add_argument("--child", choices=["dask", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.root, args.out, args.worker_memory)
        return
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from benchmarks._results import machine_line, write_section

    n = 40 if args.quick else args.subjects
    with tempfile.TemporaryDirectory(prefix="voxelwise_", dir=Path.cwd()) as tmp:
        root = Path(tmp)
        generate(root, n)
        dask_run = run_child("dask", root, root / "out_dask", args.worker_memory)
        memory_run = run_child("memory", root, root / "out_memory", args.worker_memory)
        diff = max_abs_diff(root / "out_dask", root / "out_memory")
        from pipeline.data.templates import load_template

        p = int((load_template(2).mask.get_fdata() > 0.5).sum())
    workers = dask_run["workers_peak_mb"]
    table = "\n".join(
        [
            "## Voxel-wise harmonization of GM maps (`benchmarks/voxelwise.py`)",
            "",
            f"{machine_line()}. {n} subjects × {p:,} voxels (2 mm template brain mask), 5 sites, "
            "age and sex covariates; from NIfTI maps on disk to one harmonized NIfTI per subject. "
            "Each run in its own process; peak memory = its peak RSS (VmHWM).",
            "",
            "| run | time (s) | peak memory, group process (MB) | peak per dask worker (MB) |",
            "|---|---|---|---|",
            f"| group stage: dask local cluster (2 workers, {args.worker_memory} limit) + "
            f"streaming ComBat | {dask_run['seconds']:.1f} | {dask_run['peak_mb']:.0f} | "
            f"{', '.join(f'{w:.0f}' for w in workers)} |",
            f"| in memory: one float64 matrix, ComBat, sequential writes | "
            f"{memory_run['seconds']:.1f} | {memory_run['peak_mb']:.0f} | |",
            "",
            f"Ratios: time {memory_run['seconds'] / dask_run['seconds']:.2f}× (in memory / dask), "
            f"group-process memory {memory_run['peak_mb'] / dask_run['peak_mb']:.1f}× less with "
            f"dask. Largest voxel difference between the two outputs: {diff:.1e} (float32 maps). "
            "The in-memory matrix grows as subjects × voxels × 8 bytes (1,100 ABIDE subjects: "
            "2.0 GB before ComBat's copies); the group process of the dask run (its peak is mostly imported libraries) holds a few voxel "
            "blocks whatever the number of subjects.",
        ]
    )
    write_section("voxelwise", table)
    print(table)


if __name__ == "__main__":
    main()
