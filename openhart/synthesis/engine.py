"""Dataset synthesis: run a plan on this process's share, write it safely, merge, and summarise.

One process per device under ``torchrun`` (or one plain process): every rank builds the same plan
(``openhart.synthesis.plan``), runs its round-robin share of batches (folder output) or shards
(WebDataset output), skips what a previous run already finished, and reports what it holds.
Rank 0 then writes ``metadata.jsonl`` (folder output) and the summary in ``synthesis.json``.
The process group is only used at the end; progress during the run goes through small files in
``OUT/.synthesis/`` that rank 0 reads for its aggregated progress bar.

One file on purpose: the job, its resume check, the two output loops and the merge share one
life cycle (plan → check the folder → write → gather → summarise); prompts, the plan and the
writers are their own modules.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from openhart.errors import InvalidInputError
from openhart.models.hart import HartPipeline
from openhart.synthesis.plan import FORMATS, Batch, Plan, WorkItem, build_plan
from openhart.synthesis.prompts import PromptFile, read_prompt_file
from openhart.synthesis.writers import (
    check_writable,
    describe_write_error,
    encode_png,
    png_is_complete,
    remove_stale_temporaries,
    shard_keys,
    shard_name,
    write_jsonl,
    write_png,
    write_shard,
)
from openhart.utils.config import Config, atomic_write_bytes, checked
from openhart.utils.distributed import DistributedContext, gather_objects

logger = logging.getLogger(__name__)

MANIFEST = "synthesis.json"
STATE_FOLDER = ".synthesis"  # per-rank progress files; removed when the job ends
# Settings that change the output's bytes: a rerun into the same folder must match them.
FINGERPRINT_KEYS = (
    "model", "format", "seed", "images_per_prompt", "batch_size", "shard_size", "guidance_scale",
    "num_inference_steps", "prompts_sha256",
)  # fmt: skip


class SynthesisError(InvalidInputError):
    """A job that cannot run as asked (settings, or an output folder holding a different job)."""


@dataclass(frozen=True)
class SynthesisJob(Config):
    """What to make and where; the CLI's options."""

    error_type = SynthesisError

    prompts: Path
    out: Path
    model: str  # model folder or preset name, recorded so that a rerun cannot mix models
    images_per_prompt: int = checked(1, kind="int", ge=1)
    batch_size: int = checked(8, kind="int", ge=1)
    seed: int = checked(0, kind="int", ge=0)
    output_format: str = checked("folder", kind="choice", choices=FORMATS)
    shard_size: int = checked(1000, kind="int", ge=1)
    # None: the model's own default (its sampler.json), resolved once the model is loaded.
    guidance_scale: float | None = checked(None, kind="number", ge=0, optional=True)
    num_inference_steps: int | None = checked(None, kind="int", ge=1, optional=True)
    max_images: int | None = checked(None, kind="int", ge=1, optional=True)  # only the plan's first N images

    def fingerprint(self, prompts_sha256: str) -> dict[str, Any]:
        return {
            "model": self.model,
            "format": self.output_format,
            "seed": self.seed,
            "images_per_prompt": self.images_per_prompt,
            "batch_size": self.batch_size,
            "shard_size": self.shard_size,
            "guidance_scale": self.guidance_scale,
            "num_inference_steps": self.num_inference_steps,
            "prompts_sha256": prompts_sha256,
        }


@dataclass
class RankReport:
    """What one rank did; gathered on rank 0."""

    rank: int
    done: list[int] = field(default_factory=list)  # plan indices complete on disk (folder output)
    shards: list[int] = field(default_factory=list)  # units whose shard is written (WebDataset output)
    written: int = 0  # images made by this run
    already: int = 0  # images found complete from an earlier run
    failed: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SynthesisSummary:
    """The job's outcome, written to ``synthesis.json`` and printed by the CLI."""

    planned: int  # images in the whole plan
    target: int  # images this run aims at (planned, or --max-images)
    done: int  # complete images in the output after this run
    written: int
    already: int
    failed: int
    skipped_lines: int
    bad_lines: list[str]
    world_size: int
    seconds: float
    bytes_written: int
    per_rank: list[dict[str, Any]]

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        """The human summary: counts, then throughput per process and overall."""
        out = [
            f"done {self.done}/{self.target} images ({self.written} made now, {self.already} already there), "
            f"skipped {self.skipped_lines} bad line(s), failed {self.failed} image(s)"
        ]
        rates = ", ".join(f"rank {r['rank']} {r['images_per_second']:.2f}" for r in self.per_rank)
        out.append(
            f"images/s per process: {rates}; overall {self.images_per_second:.2f} images/s "
            f"on {self.world_size} process(es) in {self.seconds:.1f} s"
        )
        return out


def load_job_inputs(job: SynthesisJob, report_bad_lines: bool = True) -> tuple[PromptFile, Plan]:
    """Read the prompts (bad lines are reported, not fatal) and build the plan every rank shares.

    ``report_bad_lines``: log each skipped line (rank 0 only, so a job lists them once).
    """
    prompt_file = read_prompt_file(job.prompts)
    for bad in prompt_file.bad if report_bad_lines else ():
        logger.warning("%s: skipping %s", job.prompts, bad)
    return prompt_file, plan_job(job, prompt_file)


def plan_job(job: SynthesisJob, prompt_file: PromptFile) -> Plan:
    """The plan of ``job`` over prompts already read (again after a setting such as guidance is resolved)."""
    try:
        plan = build_plan(
            prompt_file.lines,
            images_per_prompt=job.images_per_prompt,
            seed=job.seed,
            guidance_scale=job.guidance_scale,
            batch_size=job.batch_size,
            shard_size=job.shard_size,
        )
    except ValueError as error:
        raise SynthesisError(str(error)) from error
    if not plan.items:
        raise SynthesisError(f"{job.prompts}: no usable prompt ({len(prompt_file.bad)} bad line(s))")
    return plan


def _target(job: SynthesisJob, plan: Plan) -> int:
    return len(plan.items) if job.max_images is None else min(job.max_images, len(plan.items))


def describe_plan(job: SynthesisJob, prompt_file: PromptFile, plan: Plan, world_size: int) -> list[str]:
    """The dry run's text: what would be made, how it is split, and how much is already there."""
    target = _target(job, plan)
    lines = [
        f"prompts   {job.prompts}: {len(prompt_file.lines)} usable line(s), {len(prompt_file.bad)} bad",
        *(f"  bad {bad}" for bad in prompt_file.bad[:20]),
        f"images    {len(plan.items)} planned"
        + (f", capped at {target}" if target < len(plan.items) else ""),
        f"batches   {len(plan.batches)} of <= {job.batch_size}, in {plan.num_units} unit(s) of {job.shard_size}",
        f"model     {job.model}, seed {job.seed}, guidance {_or_default(job.guidance_scale)}, "
        f"steps {_or_default(job.num_inference_steps)}",
        f"output    {job.out} ({job.output_format})",
    ]
    for rank in range(world_size):
        mine = [i for b in plan.batches_for_rank(rank, world_size, job.output_format) for i in b.items]
        lines.append(f"rank {rank}    {sum(i.index < target for i in mine)} image(s)")
    if job.out.is_dir():
        if job.output_format == "folder":
            count = sum(png_is_complete(job.out / i.file_name) for i in plan.items)
            present = f"{count} image(s)"
        else:
            count = sum(_shard_complete(job.out, plan, u) for u in range(plan.num_units))
            present = f"{count} shard(s)"
        lines.append(f"present   {present} already complete (a run skips them)")
    return lines


def _or_default(value: object) -> str:
    return "the model's default" if value is None else str(value)


def _shard_complete(out: Path, plan: Plan, unit: int) -> bool:
    keys = shard_keys(out / shard_name(unit)) if (out / shard_name(unit)).is_file() else None
    return keys is not None and keys >= {i.key for i in plan.unit_items(unit)}


def _check_manifest(job: SynthesisJob, prompt_file: PromptFile) -> None:
    """Record the job's settings, or refuse a folder that holds a job with other settings."""
    path = job.out / MANIFEST
    fingerprint = job.fingerprint(prompt_file.sha256)
    if path.is_file():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8")).get("job", {})
        except (json.JSONDecodeError, AttributeError) as error:
            raise SynthesisError(f"{path} is not a synthesis record; use an empty output folder") from error
        changed = [k for k in FINGERPRINT_KEYS if recorded.get(k) != fingerprint[k]]
        if changed:
            detail = ", ".join(f"{k}: {recorded.get(k)!r} there, {fingerprint[k]!r} now" for k in changed)
            raise SynthesisError(
                f"{job.out} holds a synthesis job with other settings ({detail}); "
                "rerun with the same settings to resume, or use another --out"
            )
        return
    if job.out.is_dir() and any(p.name != STATE_FOLDER for p in job.out.iterdir()):
        raise SynthesisError(f"{job.out} is not empty and holds no {MANIFEST}; use an empty or new folder")
    _write_json(path, {"job": fingerprint})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    try:
        atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())
    except OSError as error:
        raise describe_write_error(path, error) from error


class ProgressBoard:
    """Per-rank progress files; rank 0 sums them into one bar with images/s, ETA and dataset size.

    Files rather than collectives: ranks finish batches at different times and must never wait
    for each other to report progress.
    """

    def __init__(self, out: Path, ctx: DistributedContext, total_planned: int, enabled: bool) -> None:
        self.folder = out / STATE_FOLDER
        self.ctx = ctx
        self.total_planned = total_planned
        self.own_todo = 0
        self.bar: tqdm | None = None
        if ctx.is_main and enabled:
            interactive = sys.stderr.isatty()
            self.bar = tqdm(total=0, unit="img", desc="synthesize", mininterval=0.5 if interactive else 30.0)

    def report(self, todo: int, written: int, failed: int, bytes_written: int, finished: bool) -> None:
        self.own_todo = todo
        if self.ctx.distributed:
            state = {
                "todo": todo,
                "written": written,
                "failed": failed,
                "bytes": bytes_written,
                "finished": finished,
            }
            try:
                atomic_write_bytes(self.folder / f"rank-{self.ctx.rank}.json", json.dumps(state).encode())
            except OSError as error:
                raise describe_write_error(self.folder, error) from error
        if self.bar is not None:
            self.refresh({self.ctx.rank: {"todo": todo, "written": written, "bytes": bytes_written}})

    def _read_all(self) -> dict[int, dict[str, Any]]:
        states: dict[int, dict[str, Any]] = {}
        for rank in range(self.ctx.world_size):
            try:
                states[rank] = json.loads((self.folder / f"rank-{rank}.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue  # not written yet (or on a node whose files this one cannot see)
        return states

    def refresh(self, own: dict[int, dict[str, Any]] | None = None) -> None:
        if self.bar is None:
            return
        states = {**self._read_all(), **(own or {})}
        unseen = self.ctx.world_size - len(states)
        total = sum(s["todo"] for s in states.values()) + unseen * self.own_todo  # unseen ranks: guess
        written = sum(s["written"] for s in states.values())
        size = sum(s["bytes"] for s in states.values())
        self.bar.total = total
        self.bar.update(written - self.bar.n)  # through update(), so tqdm's images/s and ETA follow
        if written:
            estimate = size / written * self.total_planned  # mean PNG size so far x the whole job
            self.bar.set_postfix_str(f"dataset ~{format_bytes(estimate)}", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _generate_by_index(pipeline: HartPipeline, batch: Batch, steps: int | None) -> dict[int, bytes]:
    """The batch's PNG bytes keyed by their plan index."""
    images = _generate(pipeline, batch, steps)
    return dict(zip([item.index for item in batch.items], images, strict=True))


def _generate(pipeline: HartPipeline, batch: Batch, steps: int | None) -> list[bytes]:
    """PNG bytes of every image of ``batch`` (always the whole batch: see the plan's docstring)."""
    first = batch.items[0]
    result = pipeline(
        [item.prompt for item in batch.items],
        negative_prompt=first.negative_prompt,
        guidance_scale=first.guidance_scale,
        num_inference_steps=steps,
        generator=[torch.Generator().manual_seed(item.seed) for item in batch.items],
    )
    return [encode_png(image) for image in result.images]


def _batch_failed(batch: Batch, error: Exception) -> None:
    lines = sorted({item.line for item in batch.items})
    logger.error("batch %d (line(s) %s) failed: %s: %s", batch.index, lines, type(error).__name__, error)


def run_synthesis(
    pipeline: HartPipeline,
    job: SynthesisJob,
    prompt_file: PromptFile,
    plan: Plan,
    ctx: DistributedContext,
    progress: bool = True,
) -> SynthesisSummary | None:
    """Run this rank's share of ``plan``; returns the summary on rank 0 (None elsewhere).

    Generation errors of a batch (a ``RuntimeError`` such as out-of-memory, a ``ValueError``) are
    logged with their prompt lines and counted as failed; a rerun retries them. Errors of the
    output folder (full, read-only) stop the job with :class:`OutputFolderError`.
    """
    out = job.out
    if ctx.is_main:
        check_writable(out)
        _check_manifest(job, prompt_file)
        removed = remove_stale_temporaries(out)
        if removed:
            logger.info("removed %d temporary file(s) of an interrupted run", removed)
        shutil.rmtree(out / STATE_FOLDER, ignore_errors=True)
    if ctx.distributed:
        dist.barrier()  # nobody writes before rank 0 has checked the folder and cleared old temporaries
    target = _target(job, plan)
    report = RankReport(rank=ctx.rank)
    batches = plan.batches_for_rank(ctx.rank, ctx.world_size, job.output_format)
    board = ProgressBoard(out, ctx, target, progress)
    try:
        if job.output_format == "folder":
            _run_folder(pipeline, job, batches, target, report, board)
        else:
            _run_shards(pipeline, job, plan, batches, target, report, board)
    finally:
        board.report(board.own_todo, report.written, report.failed, report.bytes_written, finished=True)
    if ctx.distributed:
        # Wait for the other ranks without blocking the bar; the long process-group timeout covers
        # ranks that finish far apart.
        waiting = dist.barrier(async_op=True)
        while not waiting.is_completed():
            board.refresh()
            time.sleep(0.5)
        waiting.wait()
    board.refresh()
    board.close()
    reports: list[RankReport] = gather_objects(report)
    if not ctx.is_main:
        return None
    return _finish(job, prompt_file, plan, target, ctx, reports)


def _run_folder(
    pipeline: HartPipeline,
    job: SynthesisJob,
    batches: list[Batch],
    target: int,
    report: RankReport,
    board: ProgressBoard,
) -> None:
    todo: list[tuple[Batch, list[WorkItem]]] = []
    for batch in batches:
        missing = []
        for item in batch.items:
            if png_is_complete(job.out / item.file_name):
                report.done.append(item.index)
                report.already += 1
            elif item.index < target:
                missing.append(item)
        if missing:
            todo.append((batch, missing))
    count = sum(len(missing) for _, missing in todo)
    board.report(count, 0, 0, 0, finished=False)
    started = time.perf_counter()
    for batch, missing in todo:
        try:
            images = _generate_by_index(pipeline, batch, job.num_inference_steps)
        except (RuntimeError, ValueError) as error:
            _batch_failed(batch, error)
            report.failed += len(missing)
        else:
            for item in missing:
                write_png(job.out / item.file_name, images[item.index])
                report.done.append(item.index)
                report.written += 1
                report.bytes_written += len(images[item.index])
        report.seconds = time.perf_counter() - started
        board.report(count, report.written, report.failed, report.bytes_written, finished=False)


def _run_shards(
    pipeline: HartPipeline,
    job: SynthesisJob,
    plan: Plan,
    batches: list[Batch],
    target: int,
    report: RankReport,
    board: ProgressBoard,
) -> None:
    units: dict[int, list[Batch]] = {}
    for batch in batches:
        units.setdefault(batch.unit, []).append(batch)
    todo: list[tuple[int, list[Batch], set[int]]] = []
    for unit, unit_batches in units.items():
        path = job.out / shard_name(unit)
        present = shard_keys(path) if path.is_file() else None
        expected = plan.unit_items(unit)
        if present is not None and present >= {i.key for i in expected}:
            report.shards.append(unit)
            report.already += len(expected)
            continue
        # A partial shard (capped or with failures) is rewritten with what it had plus what is wanted.
        wanted = {i.index for i in expected if i.index < target or (present and i.key in present)}
        if wanted:
            todo.append((unit, unit_batches, wanted))
    count = sum(len(wanted) for _, _, wanted in todo)
    board.report(count, 0, 0, 0, finished=False)
    started = time.perf_counter()
    for unit, unit_batches, wanted in todo:
        samples: list[tuple[str, bytes, dict[str, Any]]] = []
        for batch in unit_batches:
            selected = [item for item in batch.items if item.index in wanted]
            if not selected:
                continue
            try:
                images = _generate_by_index(pipeline, batch, job.num_inference_steps)
            except (RuntimeError, ValueError) as error:
                _batch_failed(batch, error)
                report.failed += len(selected)
                continue
            for item in selected:
                samples.append((item.key, images[item.index], item.metadata(job.num_inference_steps)))
                report.bytes_written += len(images[item.index])
            report.written += len(selected)
            report.seconds = time.perf_counter() - started
            board.report(count, report.written, report.failed, report.bytes_written, finished=False)
        if samples:
            samples.sort(key=lambda sample: sample[0])  # plan order, whatever the batch grouping
            write_shard(job.out / shard_name(unit), samples)
            report.shards.append(unit)
        report.seconds = time.perf_counter() - started


def _finish(
    job: SynthesisJob,
    prompt_file: PromptFile,
    plan: Plan,
    target: int,
    ctx: DistributedContext,
    reports: list[RankReport],
) -> SynthesisSummary:
    """Rank 0: merge the metadata, write the summary, clear the progress files."""
    if job.output_format == "folder":
        done = sorted({index for r in reports for index in r.done})
        write_jsonl(
            job.out / "metadata.jsonl", (plan.items[i].metadata(job.num_inference_steps) for i in done)
        )
        done_count = len(done)
    else:
        done_count = 0
        for unit in sorted({u for r in reports for u in r.shards}):
            keys = shard_keys(job.out / shard_name(unit)) or set()
            done_count += sum(item.key in keys for item in plan.unit_items(unit))
    summary = SynthesisSummary(
        planned=len(plan.items),
        target=target,
        done=done_count,
        written=sum(r.written for r in reports),
        already=sum(r.already for r in reports),
        failed=sum(r.failed for r in reports),
        skipped_lines=len(prompt_file.bad),
        bad_lines=[str(bad) for bad in prompt_file.bad],
        world_size=ctx.world_size,
        seconds=max((r.seconds for r in reports), default=0.0),
        bytes_written=sum(r.bytes_written for r in reports),
        per_rank=[
            {
                "rank": r.rank,
                "written": r.written,
                "seconds": round(r.seconds, 3),
                "images_per_second": r.images_per_second,
            }
            for r in reports
        ],
    )
    _write_json(job.out / MANIFEST, {"job": job.fingerprint(prompt_file.sha256), "summary": asdict(summary)})
    shutil.rmtree(job.out / STATE_FOLDER, ignore_errors=True)
    return summary


def format_bytes(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def threads_per_process(requested: int | None = None) -> int:
    """CPU threads for this process: ``requested``, or the usable cores split over this node's ranks."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, cores // max(1, local_world))
