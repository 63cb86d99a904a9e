"""Command line of the golden verifier (``openhart compat-verify`` calls it): prints one line per tensor.

python -m openhart.compat.verify_cli DIR [--tolerance 1e-4] [--qwen-tokenizer DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from openhart.compat import verify
from openhart.compat.verify import GoldenVerifier


@contextlib.contextmanager
def _exact_float32(enabled: bool) -> Iterator[None]:
    """An exactness check wants no TF32 on CUDA (with it images differ by ~3e-3); flags are restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    if enabled:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=verify.__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", type=Path, help="folder with golden/cases.json and official-layout checkpoints"
    )
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="max abs error allowed on float32 tensors"
    )
    parser.add_argument(
        "--qwen-tokenizer", default=None, help="folder with a Qwen2 tokenizer.json (real-id cases)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--device", default="cpu", help="run the cases on this device (cpu, cuda, mps)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="reduced precision: raise --tolerance",
    )
    args = parser.parse_args(argv)
    if not (args.folder / "golden" / "cases.json").is_file():
        print(f"error: {args.folder} has no golden/cases.json", file=sys.stderr)
        return 2
    verifier = GoldenVerifier(
        args.folder, args.tolerance, args.qwen_tokenizer, args.device, getattr(torch, args.dtype)
    )
    with torch.no_grad(), _exact_float32(args.dtype == "float32"):
        results = verifier.run()
    for result in results:
        print(result.line())
    failed = [r for r in results if r.status in ("FAIL", "UNKNOWN")]
    checked = [r for r in results if r.status == "PASS"]
    print(f"{len(checked)} passed, {len(failed)} failed ({sum(r.status == 'INPUT' for r in results)} inputs, "
          f"{sum(r.status == 'SKIP' for r in results)} skipped)")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
