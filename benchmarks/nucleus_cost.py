"""What the top-p nucleus filter costs per image: the sampler's partial ranking against a full sort.

A nucleus needs the codes of each token in order of probability. Sorting all V of them per token
was the largest single operator of the 16x16 emoji model on a CPU (a quarter of a call at batch 1);
the sampler now ranks ``NUCLEUS_CANDIDATES`` codes with a partial top-k and sorts in full only the
rows whose nucleus is wider. This times one model's pipeline call both ways, in one process, in
alternating rounds (a busy machine slows both rows alike), and counts how often the full sort ran:

    OMP_NUM_THREADS=1 python benchmarks/nucleus_cost.py --model candidates/emoji-64-latent16 \\
        --dtype bfloat16 --top-p 0.8 --out nucleus.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from residual_head_cost import seconds_per_call  # this script's folder is on sys.path when it runs

import openhart.sampling as sampling
from openhart.evaluation.benchmark import environment_record
from openhart.loading import load
from openhart.models.hart import HartPipeline
from openhart.utils.config import atomic_write_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="candidates/emoji-64-latent16")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    pipeline = load(args.model, device="cpu", dtype=getattr(torch, args.dtype))
    if not isinstance(pipeline, HartPipeline):
        raise SystemExit(f"{args.model}: not a HART model")
    partial = sampling.nucleus_drop_mask
    rows_seen = {"rows": 0, "wide_rows": 0}

    def counting_partial(logits: torch.Tensor, top_p: float) -> torch.Tensor:
        probs = logits.reshape(-1, logits.shape[-1]).softmax(dim=-1)
        ranked_mass = probs.topk(sampling.NUCLEUS_CANDIDATES, dim=-1).values.sum(dim=-1)
        rows_seen["rows"] += probs.shape[0]
        rows_seen["wide_rows"] += int((ranked_mass < top_p).sum())
        return partial(logits, top_p)

    # The full sort is the sampler's own path with every code a candidate.
    variants = {"partial_top_k": sampling.NUCLEUS_CANDIDATES, "full_sort": 2**31}
    options = {"top_p": args.top_p}
    results: dict[str, dict[str, dict[str, float]]] = {}
    try:
        sampling.nucleus_drop_mask = counting_partial  # one call counts how often rows are wide
        seconds_per_call(pipeline, 4, options, 0)
        sampling.nucleus_drop_mask = partial
        for batch_size in args.batch_size:
            times: dict[str, list[float]] = {name: [] for name in variants}
            for round_index in range(args.rounds + 1):  # round 0 warms both up
                for name, candidates in variants.items():
                    sampling.NUCLEUS_CANDIDATES = candidates
                    seconds = seconds_per_call(pipeline, batch_size, options, round_index)
                    if round_index:
                        times[name].append(seconds)
            base = statistics.median(times["full_sort"])
            results[f"batch_{batch_size}"] = {
                name: {
                    "median_s_per_image": statistics.median(values) / batch_size,
                    "ratio_to_full_sort": statistics.median(values) / base,
                }
                for name, values in times.items()
            }
            for name, row in results[f"batch_{batch_size}"].items():
                print(
                    f"batch {batch_size} {name}: {row['median_s_per_image'] * 1000:.1f} ms per image"
                    f" ({row['ratio_to_full_sort']:.2f}x)"
                )
    finally:
        sampling.nucleus_drop_mask = partial
        sampling.NUCLEUS_CANDIDATES = variants["partial_top_k"]
    report = {
        "model": args.model,
        "dtype": args.dtype,
        "top_p": args.top_p,
        "candidates": sampling.NUCLEUS_CANDIDATES,
        "wide_row_share": rows_seen["wide_rows"] / max(rows_seen["rows"], 1),
        "rounds": args.rounds,
        "results": results,
        "environment": environment_record(),
    }
    print(f"rows sorted in full: {report['wide_row_share']:.2%}")
    atomic_write_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
