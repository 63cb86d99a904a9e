"""What HART's residual head costs per image over VAR-style sampling, with and without CFG on the last scale.

HART's claim is better images than VAR-only at a small extra latency. On one model this times
the four ways to sample it, in one process, in alternating rounds (so a busy machine slows every
row alike), with the model's own sampler settings:

- ``var``: the discrete tokens only (``sample_residual=False``), CFG on every scale;
- ``hart``: the same plus the residual head (8 steps), CFG on every scale and on the head;
- ``var_unguided1`` / ``hart_unguided1``: the same with the last scale (and the head) unguided.

    OMP_NUM_THREADS=2 python benchmarks/residual_head_cost.py --model emoji-64 --out cost.json

Reports the median seconds per call at each batch size and each row's ratio to ``var``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from openhart.evaluation.benchmark import environment_record
from openhart.loading import load
from openhart.models.hart import HartPipeline
from openhart.utils.config import atomic_write_bytes

ROWS = {
    "var": {"sample_residual": False, "unguided_last_scales": 0},
    "hart": {"sample_residual": True, "unguided_last_scales": 0},
    "var_unguided1": {"sample_residual": False, "unguided_last_scales": 1},
    "hart_unguided1": {"sample_residual": True, "unguided_last_scales": 1},
}


def seconds_per_call(pipeline: HartPipeline, batch_size: int, options: dict, seed: int) -> float:
    prompts = [f"a happy dog {i}" for i in range(batch_size)]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(batch_size)]
    started = time.perf_counter()
    pipeline(prompts, generator=generators, output_type="pt", **options)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="emoji-64")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    pipeline = load(args.model, device="cpu", dtype=getattr(torch, args.dtype))
    if not isinstance(pipeline, HartPipeline):
        raise SystemExit(f"{args.model}: not a HART model")
    results: dict[str, dict[str, dict[str, float]]] = {}
    for batch_size in args.batch_size:
        for options in ROWS.values():  # warm-up: one call of every row
            seconds_per_call(pipeline, batch_size, options, 0)
        times: dict[str, list[float]] = {name: [] for name in ROWS}
        for round_index in range(args.rounds):
            for name, options in ROWS.items():
                times[name].append(seconds_per_call(pipeline, batch_size, options, round_index))
        base = statistics.median(times["var"])
        results[f"batch_{batch_size}"] = {
            name: {"median_s": statistics.median(values), "ratio_to_var": statistics.median(values) / base}
            for name, values in times.items()
        }
        for name, row in results[f"batch_{batch_size}"].items():
            print(f"batch {batch_size} {name}: {row['median_s'] * 1000:.1f} ms ({row['ratio_to_var']:.2f}x)")
    report = {
        "model": args.model,
        "dtype": args.dtype,
        "sampler": pipeline.sampler_settings.to_dict(),
        "rounds": args.rounds,
        "results": results,
        "environment": environment_record(),
        "command": f"python benchmarks/residual_head_cost.py --model {args.model} --dtype {args.dtype} "
        f"--batch-size {' '.join(map(str, args.batch_size))} --rounds {args.rounds}",
    }
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
