"""What this machine's CPU computes natively: whether bfloat16 is fast here or emulated.

bfloat16 pays off on a CPU only with its own instructions (AMX-BF16 on Intel Xeons since Sapphire
Rapids, AVX512-BF16 on AMD Zen 4 and some Intel parts). Elsewhere torch emulates it with float32
conversions around reference kernels: on a 2-core AMD EPYC with AVX2 only, one emoji-64
tokenizer training step took 132 s under bf16 autocast against 3.2 s in float32
(``benchmarks/train_throughput.py``; the table in docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU has bfloat16 instructions (AMX-BF16 or AVX512-BF16), by feature, not vendor.

    Read from the kernel's CPU flags (``/proc/cpuinfo``); where that file does not exist (macOS,
    Windows) PyTorch's own oneDNN probes answer.
    """
    if cpuinfo.is_file():
        flags: set[str] = set()
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags.update(line.partition(":")[2].split())
                break
        return bool(flags & NATIVE_BF16_FLAGS)
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, hence the getattr
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
