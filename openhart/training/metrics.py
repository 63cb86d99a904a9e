"""Training metrics: windowed means over all ranks, written as CSV rows (and TensorBoard scalars)."""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

import torch

from openhart.utils.distributed import all_reduce_sum_

logger = logging.getLogger(__name__)


class MetricsWriter:
    """Rank 0: one CSV row per log step (append on resume, rows past the resumed step dropped)."""

    def __init__(
        self, path: Path, columns: list[str], resume_step: int | None, tensorboard_dir: Path | None
    ) -> None:
        self.path = path
        self.columns = columns
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and path.is_file():
            self._truncate_after(resume_step)
        else:
            path.write_text(",".join(columns) + "\n", encoding="utf-8")
        self.tensorboard = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tensorboard = SummaryWriter(str(tensorboard_dir))
            except ImportError:
                logger.warning("run.tensorboard: the tensorboard package is not installed; CSV only")

    def _truncate_after(self, step: int) -> None:
        with open(self.path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            if row.get("step") and int(row["step"]) <= step:
                writer.writerow(row)
        self.path.write_text(buffer.getvalue(), encoding="utf-8")

    def write(self, row: dict[str, float]) -> None:
        with open(self.path, "a", encoding="utf-8", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, int(row["step"]))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


class MetricWindow:
    """Sums and counts of named metrics over a log window, averaged over all ranks on read."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.sums = torch.zeros(len(names), dtype=torch.float64)
        self.counts = torch.zeros(len(names), dtype=torch.float64)

    def add(self, values: dict[str, float | torch.Tensor]) -> None:
        for key, value in values.items():
            index = self.names.index(key)  # a metric outside `names` is a bug in the trainer
            self.sums[index] += float(value)
            self.counts[index] += 1

    def reduce(self, device: torch.device) -> dict[str, float]:
        """Window means over every rank (a collective: all ranks call it at the same step)."""
        packed = torch.cat([self.sums, self.counts]).to(device)
        all_reduce_sum_(packed)
        sums, counts = packed.cpu().chunk(2)
        self.sums.zero_()
        self.counts.zero_()
        return {n: float(s / c) for n, s, c in zip(self.names, sums, counts, strict=True) if c > 0}
