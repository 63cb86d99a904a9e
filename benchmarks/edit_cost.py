"""What an edit costs next to a generation of the same size: one row per model.

    python benchmarks/edit_cost.py --model emoji-64 --model tiny --repeats 9 --threads 1 \
        --json benchmarks/results/edit_cost_cpu_2026-11-29.json

An edit is a generation (same transformer passes, residual head and decoder) plus the input's
encoding (encoder + multi-scale quantization), the mask's downsampling per scale, and the resize
and paste-back of the result. Calls alternate (generation, edit, then the edit's parts: its
sampling with the forced tokens precomputed, the encoding, the encoder alone, the mask per scale,
the paste-back) after one untimed call of each, so a machine's changing load hits every row
alike; the medians and the ratio edit / generation are reported, and the ratio's excess can be
read off the parts. A preset without shipped weights runs
with random weights of its architecture (same cost). ``--threads 1`` keeps torch from spinning
its threads against another process on a shared machine; a ratio is valid at any thread count.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import torch

from openhart.command_setup import load_model, resolve_device, resolve_dtype
from openhart.evaluation.benchmark import synchronize
from openhart.loading import PACKAGED_WEIGHTS
from openhart.models.editing import feathered_weights, forced_tokens_for_edit, paste_onto, sampled_token_masks
from openhart.presets import PRESETS


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def measure(model: str, device: torch.device, dtype: torch.dtype, repeats: int) -> dict:
    random_weights = model in PRESETS and not (PACKAGED_WEIGHTS / model).is_dir()
    pipe = load_model(model, device, dtype, random_weights=random_weights)
    N = pipe.image_size
    image = pipe("a red apple", generator=torch.Generator().manual_seed(0), output_type="pt").images[0]
    mask = torch.zeros(1, N, N)
    mask[:, N // 4 : 3 * N // 4, N // 4 : 3 * N // 4] = 1  # the middle quarter of the area
    patch_nums = pipe.tokenizer.config.patch_nums
    forced = forced_tokens_for_edit(pipe.tokenizer, image[None], mask[None])

    def generate() -> None:
        pipe("a green pear", generator=torch.Generator().manual_seed(1), output_type="pt")

    def edit() -> None:
        pipe.edit("a green pear", image, mask, generator=torch.Generator().manual_seed(1), output_type="pt")

    def generate_forced() -> None:  # the edit's sampling alone: generation with the forced tokens
        pipe(
            "a green pear", generator=torch.Generator().manual_seed(1), output_type="pt", forced_tokens=forced
        )

    def encode() -> None:  # the forced tokens: encoder, quantization, mask per scale
        forced_tokens_for_edit(pipe.tokenizer, image[None], mask[None])

    def encoder() -> None:  # the conv encoder alone, without the multi-scale quantization
        pipe.tokenizer.encode(image[None] * 2 - 1)

    def mask_per_scale() -> None:
        sampled_token_masks(mask[None], patch_nums, 0.5)

    def paste_back() -> None:
        paste_onto(image[None], image[None], feathered_weights(mask[None], max(1, round(0.01 * N))))

    calls = {
        "generate": generate,
        "edit": edit,
        "generate_forced": generate_forced,
        "encode": encode,
        "encoder": encoder,
        "mask_per_scale": mask_per_scale,
        "paste_back": paste_back,
    }
    with torch.no_grad():
        for fn in calls.values():
            fn()  # untimed: first-call allocations
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, fn in calls.items():
                times[name].append(timed(fn, device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": model,
        "weights": "random" if random_weights else "trained",
        "image_size": N,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "repeats": repeats,
        **{f"{name}_s": round(value, 5) for name, value in medians.items()},
        "edit_over_generate": round(medians["edit"] / medians["generate"], 3),
        # The excess split: teacher forcing inside the sampler, and the stages only an edit runs.
        "forced_sampling_over_generate": round(medians["generate_forced"] / medians["generate"], 3),
        "encode_over_generate": round(medians["encode"] / medians["generate"], 3),
        "times_s": {name: [round(value, 5) for value in values] for name, values in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="model folder or preset (repeatable)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, help="torch's intra-op threads (default: torch's own)")
    parser.add_argument("--machine", default=platform.processor() or platform.machine(), help="for the JSON")
    parser.add_argument("--json", help="also write the rows and the conditions as JSON")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for model in args.model:
        row = measure(model, device, resolve_dtype(args.dtype, device, model), args.repeats)
        rows.append(row)
        print(
            f"{row['model']:<16} {row['image_size']:>5} px {row['dtype']:<9} generate {row['generate_s']:.4f} s  "
            f"edit {row['edit_s']:.4f} s  ({row['edit_over_generate']:.3f}x; forced sampling "
            f"{row['generate_forced_s']:.4f} s, encode {row['encode_s']:.4f} s of which encoder "
            f"{row['encoder_s']:.4f} s, paste-back {row['paste_back_s']:.5f} s, mask per scale "
            f"{row['mask_per_scale_s']:.5f} s)",
            flush=True,
        )
    if args.json:
        conditions = {
            "command": "python " + shlex.join(sys.argv),
            "machine": args.machine,
            "started_utc": started.isoformat(timespec="seconds"),
            "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        }
        with open(args.json, "w") as handle:
            json.dump({"conditions": conditions, "rows": rows}, handle, indent=2)
            handle.write("\n")


if __name__ == "__main__":
    main()
