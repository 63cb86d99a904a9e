"""The training loop both trainers share: data, optimiser, schedule, metrics, checkpoints, resume.

A :class:`Trainer` subclass says what the model is (``build_model``), what one step's loss is
(``compute_loss``), how the model is written (``write_model``) and what a sample grid shows
(``write_samples``); this module does the rest the same way for both:

* data: a map-style dataset is read in a per-epoch ``DistributedSampler`` order (every rank a
  disjoint share, ``drop_last`` so all ranks take the same number of steps) and a resumed run
  skips the batches of the epoch it already consumed, without loading them; an iterable dataset
  (WebDataset shards, sharded by rank and worker itself) is re-iterated each epoch
  (``set_epoch`` when it has one) and the consumed batches are read and skipped;
* AdamW (no weight decay on biases, norms and embeddings), linear warmup + cosine decay,
  gradient clipping, bf16 autocast where supported, an optional EMA of the weights;
* metrics averaged over the log window and all ranks, appended to ``OUT/metrics.csv``
  (optionally TensorBoard); a tqdm bar on rank 0;
* checkpoints every N steps and at the end (see :mod:`openhart.training.checkpoint`); ``resume``
  continues from the newest one exactly where it stopped.

Randomness: every draw of a step comes from :func:`~openhart.utils.distributed.step_generator`
(seed, step, purpose[, rank]), so a resumed run repeats an uninterrupted one.

Dimension legend: B images per process, S image side.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from tqdm.auto import tqdm

from openhart.training.checkpoint import (
    EMA_PREFIX,
    MODEL_DIR,
    TrainingState,
    capture_rng_state,
    has_checkpoints,
    latest_checkpoint,
    load_checkpoint_weights,
    load_training_state,
    restore_rng_state,
    resumable_checkpoint,
    save_checkpoint,
    split_weights,
    write_model_folder,
)
from openhart.training.ema import EMA
from openhart.training.recipe import DataRecipe, OptimRecipe, Recipe, recipe_to_dict
from openhart.utils.distributed import (
    DistributedContext,
    all_reduce_sum_,
    barrier,
    gather_objects,
    init_distributed,
    seed_everything,
)
from openhart.utils.hashing import derive_seed

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
FINAL_DIR = "final"
SAMPLES_DIR = "samples"


# ---------------------------------------------------------------------- batches
@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) in [-1, 1]
    captions: list[str]
    keys: list[str]

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True) on CUDA runs
        return Batch(self.images.pin_memory(), self.captions, self.keys)


def collate_samples(samples: list[dict[str, Any]]) -> Batch:
    """Stack dataset samples ``dict(image=(3, S, S) float in [-1, 1], caption=str, key=str)``."""
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict) or not {"image", "caption", "key"} <= set(sample):
            found = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
            raise ValueError(
                f"dataset sample {index}: expected a dict with 'image', 'caption' and 'key', got {found}"
            )
        image = sample["image"]
        if not isinstance(image, torch.Tensor) or not image.is_floating_point() or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"dataset sample {index}: 'image' must be a float tensor (3, S, S), got {shape}")
    shapes = {tuple(s["image"].shape) for s in samples}
    if len(shapes) != 1:
        raise ValueError(f"dataset samples in one batch have different image shapes: {sorted(shapes)}")
    return Batch(
        images=torch.stack([s["image"] for s in samples]),
        captions=[str(s["caption"]) for s in samples],
        keys=[str(s["key"]) for s in samples],
    )


class BatchStream:
    """Per-epoch batches of this process's share of the data, resumable at a batch index."""

    def __init__(
        self, dataset: Dataset, batch_size: int, ctx: DistributedContext, seed: int, num_workers: int = 0
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.ctx = ctx
        self.seed = seed
        self.num_workers = num_workers
        self.iterable = isinstance(dataset, IterableDataset)
        if not self.iterable:
            if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
                raise TypeError(
                    f"dataset: expected a torch Dataset or IterableDataset, got {type(dataset).__name__}"
                )
            per_rank = len(dataset) // ctx.world_size
            if per_rank < batch_size:
                raise ValueError(
                    f"data.batch_size: the dataset has {len(dataset)} samples, fewer than "
                    f"batch_size {batch_size} × world size {ctx.world_size}"
                )

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Batch]:
        """Batches of ``epoch`` from batch ``skip`` on (the first ``skip`` were consumed before)."""
        # Worker seeds (for datasets that draw random numbers) depend only on (seed, epoch, rank).
        loader_generator = torch.Generator().manual_seed(
            derive_seed(self.seed, epoch, self.ctx.rank, "loader")
        )
        common = {
            "num_workers": self.num_workers,
            "collate_fn": collate_samples,
            "generator": loader_generator,
            "pin_memory": self.ctx.device.type == "cuda",
        }
        if self.iterable:
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            loader = DataLoader(self.dataset, batch_size=self.batch_size, drop_last=True, **common)
            for index, batch in enumerate(loader):
                if index >= skip:
                    yield batch
            return
        sampler = DistributedSampler(
            self.dataset,
            num_replicas=self.ctx.world_size,
            rank=self.ctx.rank,
            shuffle=True,
            seed=self.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        order = list(sampler)
        count = len(order) // self.batch_size
        batches = [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(skip, count)]
        if batches:
            yield from DataLoader(self.dataset, batch_sampler=batches, **common)


# ---------------------------------------------------------------------- optimisation
class WarmupCosine:
    """LR factor of step n (1-based): n/warmup during warmup, then cosine from 1 to min_lr_ratio."""

    def __init__(self, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio

    def factor(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return step / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def state_dict(self) -> dict[str, Any]:
        return {
            "warmup_steps": self.warmup_steps,
            "max_steps": self.max_steps,
            "min_lr_ratio": self.min_lr_ratio,
        }


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices/kernels; none on biases, norms, embeddings, codebooks."""
    no_decay_ids: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, (nn.Embedding, nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(sub).__name__:
            no_decay_ids.update(id(p) for p in sub.parameters(recurse=False))
    decay, no_decay = [], []
    for parameter in module.parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or id(parameter) in no_decay_ids:
            no_decay.append(parameter)
        else:
            decay.append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a recipe's ``run.precision`` on ``device`` (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    # auto: bf16 where it is fast and supported (CUDA); CPUs and MPS stay in fp32.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


# ---------------------------------------------------------------------- metrics
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


@dataclass
class TrainResult:
    steps: int  # optimiser steps done in all (resumed steps included)
    finished: bool  # reached optim.max_steps (False: stopped early, resume to continue)
    out_dir: Path
    model_dir: Path | None  # final/ when finished, else the newest checkpoint's model/
    last_metrics: dict[str, float]  # the last logged row


# ---------------------------------------------------------------------- the loop
class Trainer:
    """Shared training loop; subclasses define the model and the loss (see the module docstring)."""

    #: names of the per-step metrics ``compute_loss`` may return (fixed so ranks reduce alike)
    metric_names: tuple[str, ...] = ("loss",)
    #: the kind of recipe this trainer takes
    recipe_kind: str = ""

    def __init__(
        self,
        recipe: Recipe,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        dataset: Dataset | None = None,
        ctx: DistributedContext | None = None,
    ) -> None:
        if getattr(recipe, "kind", None) != self.recipe_kind:
            raise TypeError(
                f"recipe: {type(self).__name__} needs a {self.recipe_kind} recipe, got {type(recipe).__name__}"
            )
        self.recipe = recipe
        self.ctx = ctx or init_distributed(recipe.run.device)
        self.device = self.ctx.device
        self.out_dir = Path(out_dir if out_dir is not None else recipe.run.out_dir)
        self.process_seed = seed_everything(recipe.seed, self.ctx.rank)
        if recipe.run.deterministic:
            if self.device.type == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.autocast = autocast_dtype(recipe.run.precision, self.device)

        checkpoint = None
        if resume:
            checkpoint = resumable_checkpoint(self.out_dir)
            if checkpoint is None:
                logger.info("--resume: no checkpoint in %s yet; starting from scratch", self.out_dir)
        elif has_checkpoints(self.out_dir):
            raise FileExistsError(
                f"out_dir: {self.out_dir} already holds checkpoints; pass --resume to continue that run "
                "or choose another --out"
            )

        # Subclasses may read frozen parts from the checkpoint's model folder (what the run used).
        self.resume_checkpoint: Path | None = checkpoint
        self._dataset = dataset  # loaded on first use: build_model may need it (training_dataset)
        self.model = self.build_model()  # trainable module on self.device, fp32 master weights
        if recipe.run.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        if self.ctx.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model: nn.Module = DistributedDataParallel(self.model, device_ids=device_ids)
        else:
            self.ddp_model = self.model
        optim: OptimRecipe = recipe.optim
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.model, optim.weight_decay),
            lr=optim.lr,
            betas=optim.betas,
            eps=optim.eps,
            # The fused/foreach kernels may sum in another order; keep the plain loop when exactness matters.
            foreach=False if recipe.run.deterministic else None,
        )
        self.schedule = WarmupCosine(optim.warmup_steps, optim.max_steps, optim.min_lr_ratio)
        self.ema = EMA(self.model, optim.ema_decay) if optim.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.to(self.device)

        data: DataRecipe = recipe.data
        self.dataset = self.training_dataset()
        self.stream = BatchStream(self.dataset, data.batch_size, self.ctx, recipe.seed, data.num_workers)

        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.resumed_from: Path | None = None
        self._interrupted = False
        if checkpoint is not None:
            self._load_checkpoint(checkpoint)

    # ------------------------------------------------------------------ subclass hooks
    @property
    def image_size(self) -> int:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def compute_loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Forward pass through ``self.ddp_model``: (scalar loss to minimise, metrics to log)."""
        raise NotImplementedError

    def after_step(self, batch: Batch, step: int) -> dict[str, float]:
        """Called after the optimiser step (and the EMA update); returns extra metrics."""
        return {}

    def write_model(self, folder: Path) -> None:
        raise NotImplementedError

    def write_samples(self, step: int) -> Path | None:
        """Rank 0 only: write a sample grid for ``step``; returns its path."""
        return None

    def extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Trainer-specific (JSON, tensors) saved in checkpoints."""
        return {}, {}

    def load_extra_state(self, extra: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        pass

    # ------------------------------------------------------------------ helpers for subclasses
    def training_dataset(self) -> Dataset:
        """The recipe's training data (or the one passed in), loaded once; usable in build_model."""
        if self._dataset is None:
            self._dataset = load_dataset(self.recipe.data.train, self.image_size)
        return self._dataset

    def autocast_context(self) -> AbstractContextManager:
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast)

    @property
    def saved_module(self) -> nn.Module:
        """The weights the saved model carries: the EMA when there is one, else the live weights."""
        return self.ema.module if self.ema is not None else self.model

    def trained_weights(self) -> dict[str, torch.Tensor]:
        """The weights a checkpoint stores for ``self.model`` (all of them; adapters store fewer)."""
        return dict(self.model.state_dict())

    def load_trained_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Put :meth:`trained_weights` of a checkpoint back into ``self.model``."""
        self.model.load_state_dict(weights)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_weights(self) -> dict[str, torch.Tensor]:
        weights = self.trained_weights()
        if self.ema is not None:
            weights.update({EMA_PREFIX + k: v for k, v in self.ema.state_dict().items()})
        return weights

    def save_checkpoint(self) -> Path | None:
        """Collective: gathers every rank's RNG and data position; rank 0 writes. Returns the folder."""
        rng = gather_objects(capture_rng_state())
        positions = gather_objects([self.epoch, self.batch_in_epoch])
        extra, extra_tensors = self.extra_state()
        folder = None
        if self.ctx.is_main:
            state = TrainingState(
                step=self.step,
                epoch=self.epoch,
                batch_in_epoch=self.batch_in_epoch,
                world_size=self.ctx.world_size,
                ema_updates=self.ema.num_updates if self.ema is not None else 0,
                scheduler=self.schedule.state_dict(),
                extra={**extra, "data_positions": positions},
                extra_tensors=extra_tensors,
                optimizer=self.optimizer.state_dict(),
                rng=rng,
            )
            folder = save_checkpoint(
                self.out_dir,
                state,
                self._checkpoint_weights(),
                self.write_model,
                recipe_to_dict(self.recipe),
                keep=self.recipe.run.keep_checkpoints,
            )
            logger.info("step %d: checkpoint %s", self.step, folder)
        barrier()
        return folder

    def _load_checkpoint(self, folder: Path) -> None:
        state = load_training_state(folder)
        weights = load_checkpoint_weights(folder)
        self.load_trained_weights({k: v for k, v in weights.items() if not k.startswith(EMA_PREFIX)})
        if self.ema is not None:
            ema_weights = split_weights(weights, EMA_PREFIX)
            if not ema_weights:
                raise ValueError(f"{folder}: the checkpoint has no EMA weights but optim.ema_decay > 0")
            self.ema.load_state_dict(ema_weights, state.ema_updates)
        if state.optimizer is not None:
            self.optimizer.load_state_dict(state.optimizer)
        self.step = state.step
        positions = state.extra.get("data_positions")
        same_world = state.world_size == self.ctx.world_size
        if same_world and positions:
            self.epoch, self.batch_in_epoch = positions[self.ctx.rank]
        else:
            self.epoch, self.batch_in_epoch = state.epoch, state.batch_in_epoch
        if same_world and state.rng:
            restore_rng_state(state.rng[self.ctx.rank])
        elif not same_world:
            logger.warning(
                "resuming a %d-process run with %d processes: the data order and random draws differ "
                "from an uninterrupted run",
                state.world_size,
                self.ctx.world_size,
            )
        self.load_extra_state(state.extra, state.extra_tensors)
        self.resumed_from = folder
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            folder,
            self.step,
            self.epoch,
            self.batch_in_epoch,
        )

    def _write_final(self) -> Path | None:
        target = None
        if self.ctx.is_main:
            target = write_model_folder(self.out_dir / FINAL_DIR, self.write_model)
            logger.info("wrote the trained model to %s", target)
        barrier()
        return target

    # ------------------------------------------------------------------ one optimiser step
    def _optimizer_step(self, batch: Batch, step: int) -> dict[str, float | torch.Tensor]:
        factor = self.schedule.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.recipe.optim.lr * factor
        self.optimizer.zero_grad(set_to_none=True)
        loss, metrics = self.compute_loss(batch, step)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"step {step}: the loss is {float(loss)}; lower optim.lr or check the data"
            )
        loss.backward()
        if self.recipe.optim.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.optim.grad_clip)
            metrics["grad_norm"] = float(grad_norm)
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        metrics.update(self.after_step(batch, step))
        metrics["lr"] = self.recipe.optim.lr * factor
        return metrics

    # ------------------------------------------------------------------ the loop
    def batches(self) -> Iterator[Batch]:
        """Batches from the current data position on, epoch after epoch (position kept up to date)."""
        while True:
            produced = False
            for batch in self.stream.epoch(self.epoch, skip=self.batch_in_epoch):
                produced = True
                self.batch_in_epoch += 1
                yield batch
            if not produced and self.batch_in_epoch == 0:
                raise ValueError(
                    "the dataset produced no full batch in an epoch (data.batch_size too large?)"
                )
            self.epoch += 1
            self.batch_in_epoch = 0

    def train(self, stop_at_step: int | None = None, time_limit_s: float | None = None) -> TrainResult:
        """Train to ``optim.max_steps``, or stop (with a checkpoint) at ``stop_at_step`` / after ``time_limit_s``."""
        run = self.recipe.run
        max_steps = self.recipe.optim.max_steps
        columns = ["step", "epoch", *self.metric_names, "lr", "grad_norm", "steps_per_s", "samples_per_s"]
        writer = None
        if self.ctx.is_main:
            writer = MetricsWriter(
                self.out_dir / METRICS_FILE,
                columns,
                self.step if self.resumed_from is not None else None,
                self.out_dir / "tensorboard" if run.tensorboard else None,
            )
        window = MetricWindow((*self.metric_names, "lr", "grad_norm"))
        bar = tqdm(
            total=max_steps,
            initial=self.step,
            desc=f"train {self.recipe_kind}",
            disable=not (self.ctx.is_main and run.progress),
            dynamic_ncols=True,
        )
        started = time.monotonic()
        window_start, window_steps = time.monotonic(), 0
        last_metrics: dict[str, float] = {}
        stopped_early = False
        global_batch = self.recipe.data.batch_size * self.ctx.world_size
        previous_handlers = self._install_signal_handlers()
        try:
            if self.step >= max_steps:
                logger.info("already at optim.max_steps=%d; nothing to train", max_steps)
            else:
                for batch in self.batches():
                    self.step += 1
                    window.add(self._optimizer_step(batch, self.step))
                    window_steps += 1
                    bar.update(1)
                    if self.step % run.log_every == 0 or self.step == max_steps:
                        elapsed = max(time.monotonic() - window_start, 1e-9)
                        last_metrics = {
                            "step": self.step,
                            "epoch": self.epoch,
                            **window.reduce(self.device),
                            "steps_per_s": window_steps / elapsed,
                            "samples_per_s": window_steps * global_batch / elapsed,
                        }
                        window_start, window_steps = time.monotonic(), 0
                        if writer is not None:
                            writer.write(last_metrics)
                            bar.set_postfix(loss=f"{last_metrics.get('loss', float('nan')):.4f}")
                            logger.debug("step %d: %s", self.step, last_metrics)
                    if run.sample_every and self.step % run.sample_every == 0 and self.ctx.is_main:
                        self.write_samples(self.step)
                    done = self.step >= max_steps
                    stop = not done and self._should_stop(stop_at_step, time_limit_s, started)
                    if done or stop or (run.checkpoint_every and self.step % run.checkpoint_every == 0):
                        self.save_checkpoint()
                    if done or stop:
                        stopped_early = stop
                        break
        finally:
            self._restore_signal_handlers(previous_handlers)
            bar.close()
            if writer is not None:
                writer.close()

        finished = self.step >= max_steps and not stopped_early
        model_dir = None
        if finished:
            if run.sample_every and self.step % run.sample_every != 0 and self.ctx.is_main:
                self.write_samples(self.step)
            model_dir = self._write_final()
        else:
            latest = latest_checkpoint(self.out_dir)
            model_dir = latest / MODEL_DIR if latest is not None else None
            logger.info("stopped at step %d of %d; continue with --resume", self.step, max_steps)
        return TrainResult(self.step, finished, self.out_dir, model_dir, last_metrics)

    def _should_stop(self, stop_at_step: int | None, time_limit_s: float | None, started: float) -> bool:
        """Stop here? (step limit, time limit, SIGINT/SIGTERM); all ranks agree on the answer."""
        local = self._interrupted or (stop_at_step is not None and self.step >= stop_at_step)
        if time_limit_s is not None and time.monotonic() - started >= time_limit_s:
            local = True
        if not self.ctx.distributed:
            return local
        # A signal or a clock reaches the ranks at different steps; stopping at different steps
        # would leave the others waiting in a collective, so any rank's "stop" stops all.
        flag = torch.tensor([float(local)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _install_signal_handlers(self) -> dict[int, Any]:
        """First SIGINT/SIGTERM: finish the step, checkpoint and stop; a second one interrupts at once."""
        self._interrupted = False
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum: int, frame: Any) -> None:
            if self._interrupted:
                raise KeyboardInterrupt
            self._interrupted = True
            logger.warning("signal %d: stopping after this step with a checkpoint (again to abort)", signum)

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def load_dataset(spec: dict[str, Any], image_size: int) -> Dataset:
    """``openhart.data.build_dataset(spec, image_size)``, with a clear error when data is not set up."""
    if not spec:
        raise ValueError("data.train: the recipe names no dataset (e.g. {kind: imagefolder, path: DIR})")
    try:
        from openhart.data import build_dataset
    except ImportError as error:
        raise ImportError(
            "openhart.data.build_dataset is not available in this installation; pass a dataset to the "
            f"trainer directly ({error})"
        ) from error
    return build_dataset(spec, image_size)
