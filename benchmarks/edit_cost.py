"""What an edit costs next to a generation of the same size: one line per model.

    python benchmarks/edit_cost.py --model emoji-64 --model tiny --repeats 7 --device cpu

An edit is a generation (same transformer passes, residual head and decoder) plus the input's
encoding (encoder + multi-scale quantization) and the paste-back. Calls alternate (generation,
edit, generation, ...) after one untimed call of each, so a machine's changing load hits both
alike; the medians and their ratio are printed, with the encoding alone timed the same way.
A preset without shipped weights runs with random weights (same cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from openhart.command_setup import load_model, resolve_device, resolve_dtype
from openhart.evaluation.benchmark import synchronize


def timed(fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(model: str, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    pipe = load_model(model, device, dtype)
    N = pipe.image_size
    image = pipe("a red apple", generator=torch.Generator().manual_seed(0), output_type="pt").images[0]
    mask = torch.zeros(N, N)
    mask[N // 4 : 3 * N // 4, N // 4 : 3 * N // 4] = 1  # the middle quarter of the area

    def generate() -> None:
        pipe("a green pear", generator=torch.Generator().manual_seed(1), output_type="pt")

    def edit() -> None:
        pipe.edit("a green pear", image, mask, generator=torch.Generator().manual_seed(1), output_type="pt")

    def encode() -> None:
        with torch.no_grad():
            pipe.tokenizer.split(pipe.tokenizer.encode(image[None].to(device, dtype) * 2 - 1))

    calls = {"generate": generate, "edit": edit, "encode": encode}
    for fn in calls.values():
        fn()  # untimed: first-call allocations
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(timed(fn, device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": model,
        "image_size": N,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "repeats": repeats,
        "generate_s": round(medians["generate"], 4),
        "edit_s": round(medians["edit"], 4),
        "encode_s": round(medians["encode"], 4),
        "edit_over_generate": round(medians["edit"] / medians["generate"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model folder or preset (repeatable)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", help="also write the rows as JSON")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for model in args.model:
        row = measure(model, device, resolve_dtype(args.dtype, device), args.repeats)
        rows.append(row)
        print(
            f"{row['model']:<16} {row['image_size']:>5} px {row['dtype']:<9} generate {row['generate_s']:.3f} s  "
            f"edit {row['edit_s']:.3f} s  ({row['edit_over_generate']:.3f}x; encoding {row['encode_s']:.3f} s)",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
