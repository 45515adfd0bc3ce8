"""Train and inference throughput (volumes/s) of every model at 64³, with ratios to ``cnn``.

Usage::

    python -m benchmarks.models_throughput [--device cpu|cuda|auto] [--size 64] [--batch 2]

Writes the section ``models_throughput_<device>`` of ``benchmarks/RESULTS.md`` (and, with
``--json``, the raw figures). Target (issue 6): a ``steerable`` training step at most 4× the
``cnn`` step. Medians over ``--steps`` timed steps after one warm-up step; on CUDA with AMP.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from benchmarks._results import machine_line, write_section
from pipeline.io import write_text
from pipeline.models import MODEL_NAMES, build_model, n_parameters
from pipeline.models.device import autocast, select_device

logger = logging.getLogger("benchmarks.models_throughput")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model, opt, x, y, device, amp) -> float:
    _sync(device)
    t0 = time.perf_counter()
    with autocast(device, amp):
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    if hasattr(model, "symmetry_penalty"):
        loss = loss + model.symmetry_penalty()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def _inference(model, x, device, amp) -> float:
    _sync(device)
    t0 = time.perf_counter()
    with autocast(device, amp):
        model(x)
    _sync(device)
    return time.perf_counter() - t0


def measure(
    names: list[str], device: torch.device, size: int, batch: int, steps: int, amp: bool
) -> list[dict]:
    """Median seconds per training step and per inference batch, models interleaved per round.

    Interleaving (one step of every model per round) spreads a busy machine's load evenly over
    the models, so the ratios stay meaningful when absolute times drift.
    """
    torch.manual_seed(0)
    models = {n: build_model(n, 1, 2).to(device) for n in names}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-3) for n, m in models.items()}
    x = torch.randn(batch, 1, size, size, size, device=device)
    y = torch.randint(0, 2, (batch,), device=device)
    train: dict[str, list[float]] = {n: [] for n in names}
    infer: dict[str, list[float]] = {n: [] for n in names}
    for i in range(steps + 1):  # round 0 is the warm-up
        for n, m in models.items():
            m.train()
            t = _train_step(m, opts[n], x, y, device, amp)
            m.eval()
            ti = _inference(m, x, device, amp)
            if i:
                train[n].append(t)
                infer[n].append(ti)
        logger.info("round %d/%d done", i, steps)
    rows = []
    for n, m in models.items():
        train_s, infer_s = statistics.median(train[n]), statistics.median(infer[n])
        rows.append(
            {
                "model": n,
                "parameters": n_parameters(m),
                "train_step_s": train_s,
                "train_volumes_per_s": batch / train_s,
                "inference_volumes_per_s": batch / infer_s,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--size", type=int, default=64, help="cube side in voxels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--json", type=Path, default=None, help="also write raw figures here")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only write the RESULTS.md section from a saved --json")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.from_json:
        payload = json.loads(args.from_json.read_text())
        write_section(f"models_throughput_{payload['device_type']}", report(payload))
        return 0
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    torch.backends.cudnn.benchmark = True
    amp = device.type == "cuda" and not args.no_amp
    models = ["cnn"] + [m for m in args.models if m != "cnn"]
    rows = measure(models, device, args.size, args.batch, args.steps, amp)
    base = rows[0]
    for row in rows:
        row["train_step_ratio_to_cnn"] = row["train_step_s"] / base["train_step_s"]
        row["inference_ratio_to_cnn"] = (
            base["inference_volumes_per_s"] / row["inference_volumes_per_s"]
        )
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    setup = (
        f"{machine_line() if device.type == 'cpu' else card}; torch {torch.__version__}; "
        f"batch {args.batch}; {'AMP (autocast)' if amp else 'float32'}; "
        f"{torch.get_num_threads()} CPU threads; median of {args.steps} rounds after a warm-up, "
        "models interleaved."
    )
    payload = {"device": card, "device_type": device.type, "size": args.size, "setup": setup,
               "rows": rows}  # fmt: skip
    if args.json:
        write_text(args.json, json.dumps(payload, indent=2))
    text = report(payload)
    print(text)  # noqa: T201 - the benchmark's report
    if not args.no_write:
        write_section(f"models_throughput_{device.type}", text)
    return 0


def report(payload: dict) -> str:
    """Markdown table of a measurement (as saved by ``--json``)."""
    rows = payload["rows"]
    lines = [
        f"## Model throughput at {payload['size']}³ on {payload['device_type']} "
        f"({payload['device']})",
        "",
        payload["setup"],
        "",
        "| model | parameters | train vol/s | train step s | step ÷ cnn | inference vol/s "
        "| inference time ÷ cnn |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['train_volumes_per_s']:.2f} | "
            f"{r['train_step_s']:.3f} | {r['train_step_ratio_to_cnn']:.2f} | "
            f"{r['inference_volumes_per_s']:.2f} | {r['inference_ratio_to_cnn']:.2f} |"
        )
    steer = next((r for r in rows if r["model"] == "steerable"), None)
    if steer is not None:
        ok = steer["train_step_ratio_to_cnn"] <= 4
        lines += [
            "",
            f"Target `steerable` step ≤ 4× `cnn` step: "
            f"{'met' if ok else 'NOT met'} ({steer['train_step_ratio_to_cnn']:.2f}×).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
