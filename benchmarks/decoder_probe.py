"""Where the 1024 px decoder's time and memory go on a CUDA GPU (a diagnosis, not a benchmark table).

    PYTHONPATH=. python benchmarks/decoder_probe.py --out DIR

Writes ``decoder_probe.json`` and two profiler tables grouped by input shape (eager contiguous and
compiled channels-last, batch 1), so the slowest convolutions can be told apart by their shapes;
then times the last convolution (160 → 3 channels at 1024²) alone in both memory formats and with
its filters padded to 8, 16 and 32, and the decoder's peak memory above its weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.evaluation.benchmark import median_seconds
from openhart.presets import build_pipeline


def _table(fn) -> str:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    averages = prof.key_averages(group_by_input_shape=True)
    return averages.table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=60)


def _peak_above(fn, device: torch.device) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**30


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("decoder-probe"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda")
    pipe = build_pipeline("hart-0.7b-1024", seed=0, device=device, dtype=torch.bfloat16)
    decoder = pipe.tokenizer.decoder
    config = pipe.tokenizer.config
    del pipe  # only the decoder's weights stay allocated
    torch.cuda.empty_cache()
    latent = torch.randn(1, config.latent_channels, config.latent_size, config.latent_size, device=device)
    latent = latent.to(torch.bfloat16)
    report: dict[str, object] = {"card": torch.cuda.get_device_name(device), "torch": torch.__version__}

    report["eager_contiguous_s"] = median_seconds(lambda: decoder(latent), device)
    report["eager_contiguous_peak_above_weights_gib"] = _peak_above(lambda: decoder(latent), device)
    (args.out / "decoder_eager_by_shape.txt").write_text(_table(lambda: decoder(latent)))
    print(json.dumps(report, indent=2), flush=True)

    decoder.to(memory_format=torch.channels_last)
    nhwc = latent.contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(decoder)
    report["compiled_channels_last_s"] = median_seconds(lambda: compiled(nhwc), device)
    report["compiled_channels_last_peak_above_weights_gib"] = _peak_above(lambda: compiled(nhwc), device)
    (args.out / "decoder_compiled_by_shape.txt").write_text(_table(lambda: compiled(nhwc)))
    print(json.dumps(report, indent=2), flush=True)

    # The last convolution alone: 3 output channels is the one odd channel count in the decoder.
    conv = decoder.conv_out
    side = config.latent_size * 2 ** (len(config.ch_mult) - 1)
    features = torch.randn(1, conv.in_channels, side, side, device=device, dtype=torch.bfloat16)
    last: dict[str, float] = {}
    for name, memory_format in (
        ("contiguous", torch.contiguous_format),
        ("channels_last", torch.channels_last),
    ):
        x = features.contiguous(memory_format=memory_format)
        for filters in (3, 8, 16, 32):
            weight = F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, filters - 3)).contiguous(
                memory_format=memory_format
            )
            last[f"{name}_{filters}_filters_s"] = median_seconds(
                lambda x=x, weight=weight: F.conv2d(x, weight, padding=1), device
            )
    report["conv_out_alone"] = last
    print(json.dumps(report, indent=2), flush=True)
    (args.out / "decoder_probe.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
