"""The training loop every trainer shares: the step, checkpoints, resume, stopping.

A :class:`Trainer` subclass says what the model is (``build_model``), what one step's loss is
(``compute_loss``), how the model is written (``write_model``) and what a sample grid shows
(``write_samples``); this module does the rest the same way for all, with its helpers one job
each:

* data: :mod:`.batches` (each process's resumable share per epoch);
* AdamW (no weight decay on biases, norms and embeddings), linear warmup + cosine decay, bf16
  autocast where supported: :mod:`.optim`; gradient clipping and an optional EMA here;
* metrics averaged over the log window and all ranks, appended to ``OUT/metrics.csv``
  (optionally TensorBoard): :mod:`.metrics`; a tqdm bar on rank 0;
* checkpoints every N steps and at the end (see :mod:`openhart.training.checkpoint`); ``resume``
  continues from the newest one exactly where it stopped.

Randomness: every draw of a step comes from :func:`~openhart.utils.distributed.step_generator`
(seed, step, purpose[, rank]), so a resumed run repeats an uninterrupted one.

Dimension legend: B images per process, S image side.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from openhart.training.batches import Batch, BatchStream, load_dataset
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
from openhart.training.metrics import MetricsWriter, MetricWindow
from openhart.training.optim import WarmupCosine, autocast_dtype, parameter_groups
from openhart.training.recipe import DataRecipe, OptimRecipe, Recipe, recipe_to_dict
from openhart.utils.distributed import (
    DistributedContext,
    barrier,
    gather_objects,
    init_distributed,
    seed_everything,
)
from openhart.utils.memory import release_freed_memory

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
FINAL_DIR = "final"
SAMPLES_DIR = "samples"


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
            parameter_groups(self.model, optim.weight_decay, self.learning_rate_scales()),
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

    def learning_rate_scales(self) -> dict[str, float]:
        """Multipliers of the scheduled learning rate by ``self.model`` parameter name (default: none)."""
        return {}

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

    @contextmanager
    def evaluation_mode(self) -> Iterator[None]:
        """``self.model`` in eval mode (sample grids, held-out losses), its previous mode again after.

        The one place a trainer leaves train mode: pipelines built around the networks leave their
        modes alone (see ``PipelineBase.eval``).
        """
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

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
            # Checkpoints written before groups had an lr_scale resume with 1.0.
            group["lr"] = self.recipe.optim.lr * factor * group.get("lr_scale", 1.0)
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
                        # Steps allocate tensors of varying shapes (subsampled token counts, new
                        # cache entries); glibc keeps the freed blocks fragmented in its heap and
                        # the resident set grows by gigabytes per epoch unless they are returned.
                        release_freed_memory()
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
