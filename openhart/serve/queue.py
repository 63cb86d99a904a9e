"""A bounded generation queue served by a fixed number of worker threads.

Legend: B images in one pipeline call (a batch of jobs), N images of one job.

The HTTP handlers never run torch: they :meth:`GenerationQueue.submit` a job and await its future.
At most ``capacity`` jobs wait; one more gets :class:`QueueFull` (the API answers 503 with
Retry-After), so memory stays bounded however many clients there are. Each worker takes the
oldest waiting job and, when ``max_batch_images`` > 1, the compatible jobs behind it (same
guidance, steps and kind of negative prompt), and runs them as one pipeline call with one
generator per image, so image i of job j gets the same seed (``(seed + i) mod 2**32``,
:func:`~openhart.serve.schema.image_seed`) as it would alone.

Batching changes the floating-point reduction order of a few kernels, so a batched image can
differ from the lone one by one level in a few pixels; that is why it is off by default and
"same seed → same bytes" is only promised with ``max_batch_images == 1``.

Cancellation is cooperative: the pipeline calls back after every stage (text encoder, each
scale, residual, decode) and the worker stops a batch there once every job in it was given up
(timed out) or the queue is closing.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import io
import logging
import math
import statistics
import threading
import time
from concurrent.futures import Future
from typing import Any

import torch
from PIL import Image

from openhart.serve.schema import image_seed

logger = logging.getLogger(__name__)

# Pillow's encoder names for the formats the API offers.
_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}
# Retry-After: the median of this many recent batch durations (a big request does not set the
# estimate for long). The queue's first batch is not among them: it pays one-time costs (lazy
# initialisation, kernel selection; 0.8 s where the next take 0.2 s), and as the only sample it
# would make every estimate 4x too long.
RECENT_BATCHES = 9
# Before a batch has been measured: this many seconds per batch. Too short only costs a client one
# more cheap 503, whose Retry-After then comes from real timings; too long (a fixed 1 s guess times
# 17 batches) sent clients away for 17 s from a server whose batches take 0.04 s.
COLD_SECONDS_PER_BATCH = 0.1


class QueueFull(RuntimeError):
    """Every waiting slot is taken; ``retry_after_s`` estimates when one frees up."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the generation queue is full; retry in about {retry_after_s} s")
        self.retry_after_s = retry_after_s


class QueueClosed(RuntimeError):
    """The server is shutting down and takes no more work."""


class JobAbandoned(RuntimeError):
    """The job was stopped between two stages (its client gave up or the server is closing)."""


@dataclasses.dataclass(frozen=True, eq=False)
class EditInputs:
    """What turns a request into an edit: the decoded input, its mask, and the edit's options."""

    image: torch.Tensor  # (3, H, W) in [0, 1]
    mask: torch.Tensor | None  # (1, H, W) in [0, 1], white = repaint; None: no mask
    strength: float = 1.0
    paste_back: bool = True


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """A validated request with every default resolved (the seed included)."""

    prompt: str
    negative_prompt: str | None
    seed: int
    guidance_scale: float
    steps: int
    num_images: int
    image_format: str = "png"  # how the worker encodes the images: "png" or "jpeg"
    edit: EditInputs | None = None  # set: an edit of this image (pipeline.edit) instead of a generation

    def batch_key(self) -> tuple[float, int, bool, int]:
        # One pipeline call has one guidance scale and step count, and either every image gets a
        # negative prompt or none does (None means the model's empty context, not an empty string).
        # An edit runs alone: its input is its own (the key holds the inputs' identity).
        return (self.guidance_scale, self.steps, self.negative_prompt is None, id(self.edit))


@dataclasses.dataclass
class GenerationResult:
    images: list[bytes]  # N encoded images
    width: int
    height: int
    queue_s: float
    inference_s: float
    batch_images: int


@dataclasses.dataclass(eq=False)
class GenerationJob:
    request: GenerationRequest
    future: Future = dataclasses.field(default_factory=Future)
    abandoned: threading.Event = dataclasses.field(default_factory=threading.Event)
    enqueued_at: float = dataclasses.field(default_factory=time.perf_counter)


def encode_image(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format=_PIL_FORMATS[image_format])
    return buffer.getvalue()


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class GenerationQueue:
    """``workers`` threads serving at most ``capacity`` waiting jobs for one pipeline."""

    def __init__(
        self,
        pipeline: Any,
        *,
        workers: int = 1,
        capacity: int = 16,
        max_batch_images: int = 1,
        torch_threads: int | None = None,
    ) -> None:
        for name, value in (
            ("workers", workers),
            ("capacity", capacity),
            ("max_batch_images", max_batch_images),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if torch_threads is not None and (not isinstance(torch_threads, int) or torch_threads < 1):
            raise ValueError(f"torch_threads must be an int >= 1 or None, got {torch_threads!r}")
        self.pipeline = pipeline
        self.workers = workers
        self.capacity = capacity
        self.max_batch_images = max_batch_images
        self.torch_threads = torch_threads
        self._pending: collections.deque[GenerationJob] = collections.deque()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._closing = False
        self._abort = threading.Event()  # set on close: running batches stop at the next stage
        self._running = 0
        self._completed = 0
        self._rejected = 0
        self._batch_seconds: collections.deque[float] = collections.deque(maxlen=RECENT_BATCHES)
        self._first_batch_done = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        with self._lock:
            if self._threads:
                return
            self._threads = [
                threading.Thread(target=self._work, name=f"openhart-worker-{i}", daemon=True)
                for i in range(self.workers)
            ]
        for thread in self._threads:
            thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Take no more work, fail waiting jobs with :class:`QueueClosed`, stop running batches
        at their next stage, and wait up to ``timeout_s`` for the workers to finish."""
        with self._lock:
            self._closing = True
            waiting = list(self._pending)
            self._pending.clear()
            self._ready.notify_all()
        self._abort.set()
        for job in waiting:
            if not job.future.done():
                job.future.set_exception(QueueClosed("the server is shutting down"))
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in self._threads if thread.is_alive()]
        if alive:
            logger.warning("workers still running after %.0f s: %s", timeout_s, ", ".join(alive))

    @property
    def closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ client side
    def submit(self, request: GenerationRequest) -> GenerationJob:
        """Queue ``request``; raises :class:`QueueFull` or :class:`QueueClosed` instead of waiting."""
        job = GenerationJob(request)
        with self._lock:
            if self._closing:
                raise QueueClosed("the server is shutting down")
            if len(self._pending) >= self.capacity:
                self._rejected += 1
                raise QueueFull(self._retry_after_locked())
            self._pending.append(job)
            self._ready.notify()
        return job

    def refuse_if_full(self) -> QueueFull | None:
        """A :class:`QueueFull` (counted as a rejection) when no slot is free, else None.

        Lets the HTTP layer answer 503 before reading and validating a body: under a flood of
        requests that cheap path leaves more of the CPU (and the GIL) to the workers.
        """
        with self._lock:
            if self._closing or len(self._pending) < self.capacity:
                return None
            self._rejected += 1
            return QueueFull(self._retry_after_locked())

    def abandon(self, job: GenerationJob) -> None:
        """The client stopped waiting: drop the job if it still waits, else let its batch stop early."""
        job.abandoned.set()
        with self._lock:
            if job in self._pending:
                self._pending.remove(job)
        job.future.cancel()  # succeeds only while the job has not started

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "workers": self.workers,
                "capacity": self.capacity,
                "pending": len(self._pending),
                "running": self._running,
                "max_batch_images": self.max_batch_images,
                "completed": self._completed,
                "rejected": self._rejected,
            }

    def seconds_per_batch(self) -> float:
        """The batch duration Retry-After is estimated from (see RECENT_BATCHES)."""
        with self._lock:
            return self._seconds_per_batch_locked()

    def _seconds_per_batch_locked(self) -> float:
        return statistics.median(self._batch_seconds) if self._batch_seconds else COLD_SECONDS_PER_BATCH

    def _retry_after_locked(self) -> int:
        # Batches needed to drain the waiting jobs (as if each asked for one image) plus the running
        # one, spread over the workers, times the recent batch duration; clamped to [1, 120] s so
        # clients neither hammer the server nor give up on it.
        batches = math.ceil(len(self._pending) / self.max_batch_images) + 1
        seconds = batches * self._seconds_per_batch_locked() / self.workers
        return int(min(120, max(1, math.ceil(seconds))))

    # ------------------------------------------------------------------ worker side
    def _work(self) -> None:
        if self.torch_threads is not None:
            # CPU kernels split work over this many threads and wait for the slowest: more threads
            # than free cores (the HTTP loop needs one) make every call as slow as a descheduled thread.
            torch.set_num_threads(self.torch_threads)
        while True:
            with self._lock:
                while not self._pending and not self._closing:
                    self._ready.wait()
                if self._closing:
                    return
                batch = self._take_batch_locked()
                self._running += len(batch)
            try:
                if batch:
                    self._run(batch)
            finally:
                with self._lock:
                    self._running -= len(batch)

    def _take_batch_locked(self) -> list[GenerationJob]:
        """The oldest startable job plus compatible ones behind it, up to ``max_batch_images`` images."""
        batch: list[GenerationJob] = []
        while self._pending and not batch:
            job = self._pending.popleft()
            if job.future.set_running_or_notify_cancel():  # False: cancelled while waiting
                batch.append(job)
        if not batch or self.max_batch_images == 1:
            return batch
        key, images = batch[0].request.batch_key(), batch[0].request.num_images
        for job in list(self._pending):
            if job.request.batch_key() != key or images + job.request.num_images > self.max_batch_images:
                continue
            self._pending.remove(job)
            if job.future.set_running_or_notify_cancel():
                batch.append(job)
                images += job.request.num_images
        return batch

    def _run(self, batch: list[GenerationJob]) -> None:
        started = time.perf_counter()
        first = batch[0].request
        prompts = [job.request.prompt for job in batch for _ in range(job.request.num_images)]  # B
        negatives = None
        if first.negative_prompt is not None:
            negatives = [job.request.negative_prompt for job in batch for _ in range(job.request.num_images)]
        # One CPU generator per image with its own seed: the image does not depend on its batch-mates.
        generators = [
            torch.Generator().manual_seed(image_seed(job.request.seed, i))
            for job in batch
            for i in range(job.request.num_images)
        ]

        def stop_if_given_up(stage: str) -> None:
            if self._abort.is_set() or all(job.abandoned.is_set() for job in batch):
                raise JobAbandoned(f"stopped after stage {stage}")

        try:
            options = {
                "negative_prompt": negatives,
                "guidance_scale": first.guidance_scale,
                "num_inference_steps": first.steps,
                "generator": generators,
                "stage_callback": stop_if_given_up,
            }
            if first.edit is None:
                images = self.pipeline(prompts, **options).images
            else:  # an edit runs alone (batch_key), one image edited num_images times
                edit = first.edit
                images = self.pipeline.edit(
                    first.prompt,
                    edit.image,
                    edit.mask,
                    strength=edit.strength,
                    paste_back=edit.paste_back,
                    num_images_per_prompt=first.num_images,
                    **{**options, "negative_prompt": first.negative_prompt},
                ).images
            inference_s = time.perf_counter() - started
            start = 0
            for job in batch:
                count = job.request.num_images
                encoded = [
                    encode_image(image, job.request.image_format) for image in images[start : start + count]
                ]
                start += count
                width, height = images[0].size
                job.future.set_result(
                    GenerationResult(
                        images=encoded,
                        width=width,
                        height=height,
                        queue_s=started - job.enqueued_at,
                        inference_s=inference_s,
                        batch_images=len(prompts),
                    )
                )
        except Exception as error:
            if not isinstance(error, JobAbandoned):
                logger.exception("generation failed for a batch of %d image(s)", len(prompts))
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        with self._lock:
            self._completed += len(batch)
            if self._first_batch_done:
                self._batch_seconds.append(inference_s)
            self._first_batch_done = True
