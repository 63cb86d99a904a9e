"""Seconds per image of several models (or dtypes of one), timed against each other in one process.

Which candidate for the default model is fast enough? Each model runs with its own sampler
defaults (``sampler.json``) and speed options (``speed.json``), as ``openhart generate`` would;
every round calls each model once per batch size in turn, so a busy machine slows every row
alike, and the report gives medians and each row's ratio to the first model.

    python benchmarks/model_latency.py --model 8x8=emoji-64 --model 16x16=runs/cand \\
        --model 16x16-bf16=runs/cand@bfloat16 --batch-size 1 16 --rounds 7 --out latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from residual_head_cost import seconds_per_call  # this script's folder is on sys.path when it runs

from openhart.evaluation.benchmark import environment_record
from openhart.loading import load
from openhart.models.hart import HartPipeline
from openhart.utils.config import atomic_write_bytes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def parse_model(value: str) -> tuple[str, str, str]:
    """``NAME=MODEL[@DTYPE]`` → (name, model, dtype)."""
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL[@DTYPE], got {value!r}")
    model, _, dtype = rest.partition("@")
    dtype = dtype or "float32"
    if dtype not in DTYPES:
        raise argparse.ArgumentTypeError(f"{value!r}: dtype must be one of {sorted(DTYPES)}")
    return name, model, dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=parse_model, action="append", required=True, help="NAME=MODEL[@DTYPE]"
    )
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    names = [name for name, _, _ in args.model]
    if len(set(names)) != len(names):
        parser.error(f"--model names must differ: {names}")

    pipelines: dict[str, HartPipeline] = {}
    for name, model, dtype in args.model:
        pipeline = load(model, device="cpu", dtype=DTYPES[dtype])
        if not isinstance(pipeline, HartPipeline):
            raise SystemExit(f"{model}: not a HART model")
        pipelines[name] = pipeline
    results: dict[str, dict[str, dict[str, float]]] = {}
    for batch_size in args.batch_size:
        for pipeline in pipelines.values():  # warm-up: one call of every model
            seconds_per_call(pipeline, batch_size, {}, 0)
        times: dict[str, list[float]] = {name: [] for name in pipelines}
        for round_index in range(args.rounds):
            for name, pipeline in pipelines.items():
                times[name].append(seconds_per_call(pipeline, batch_size, {}, round_index))
        base = statistics.median(times[names[0]])
        rows = {}
        for name, values in times.items():
            median = statistics.median(values)
            rows[name] = {
                "median_s_per_call": median,
                "median_s_per_image": median / batch_size,
                f"ratio_to_{names[0]}": median / base,
            }
            print(
                f"batch {batch_size} {name}: {median / batch_size * 1000:.1f} ms per image ({median / base:.2f}x)"
            )
        results[f"batch_{batch_size}"] = rows
    report = {
        "models": [
            {
                "name": name,
                "model": model,
                "dtype": dtype,
                "sampler": pipelines[name].sampler_settings.to_dict(),
                "unguided_last_scales": pipelines[name].speed.unguided_last_scales,
            }
            for name, model, dtype in args.model
        ],
        "rounds": args.rounds,
        "results": results,
        "environment": environment_record(),
        "command": "python " + " ".join(sys.argv),
    }
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
