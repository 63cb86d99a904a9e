"""``openhart serve``: load one model, then serve the browser UI and the JSON API with uvicorn.

openhart serve --model tiny                      # http://127.0.0.1:7860
python -m openhart.serve.cli --model DIR --port 8000 --workers 1 --queue-size 16

Register in the main CLI with ``app.command()(serve)``. The web extra (fastapi, uvicorn) is only
imported when the command runs, so ``openhart generate`` works without it.

SIGINT/SIGTERM: uvicorn stops accepting connections, lets in-flight requests finish (each is
bounded by ``--timeout``), then the workers stop and the process exits with status 0.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

from openhart.command_setup import DeviceChoice, DtypeChoice, RandomWeightsOption
from openhart.error_boundary import ErrorBoundaryCommand
from openhart.errors import DependencyError, InvalidInputError, OpenHARTError
from openhart.loading import DEFAULT_MODEL
from openhart.lora_cli import LoraOption, apply_lora_options

logger = logging.getLogger("openhart.serve")


# Extra seconds uvicorn waits for in-flight requests on shutdown, beyond one request timeout.
SHUTDOWN_GRACE_S = 5.0


def serve(
    model: Annotated[
        str | None, typer.Option(help="Model folder or preset name (default: the embedded model).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to bind; anything but loopback exposes the server (no auth).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free port).")] = 7860,
    device: Annotated[DeviceChoice, typer.Option(help="Where to run.")] = DeviceChoice.auto,
    dtype: Annotated[
        DtypeChoice,
        typer.Option(
            help="Weights dtype (auto: bf16 on CUDA, MPS, and CPUs with native bf16 for models of 200 MiB or more)."
        ),
    ] = DtypeChoice.auto,
    random_weights: RandomWeightsOption = False,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Generation worker threads.")] = 1,
    queue_size: Annotated[
        int, typer.Option(min=1, max=100_000, help="Requests that may wait for a worker; more get 503.")
    ] = 16,
    max_batch_images: Annotated[
        int,
        typer.Option(
            min=1,
            max=1024,
            help="Images of compatible requests run as one call (1: off; >1 may change a pixel level "
            "now and then, so same seed → same bytes only holds at 1).",
        ),
    ] = 1,
    threads: Annotated[
        int,
        typer.Option(
            min=0,
            max=1024,
            help="CPU threads per worker for torch (0: auto = one core left for HTTP, split over the "
            "workers, on CPU; torch's default on GPUs).",
        ),
    ] = 0,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds per request, queue wait included (then 504).")
    ] = 120.0,
    max_prompt_chars: Annotated[int, typer.Option(min=1)] = 1000,
    max_num_images: Annotated[int, typer.Option(min=1)] = 4,
    max_steps: Annotated[int, typer.Option(min=1, help="Most residual diffusion steps per request.")] = 50,
    max_guidance: Annotated[float, typer.Option(min=0.001, help="Largest guidance_scale accepted.")] = 20.0,
    max_body_bytes: Annotated[int, typer.Option(min=1024)] = 1 << 20,
    max_image_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest image or mask file of POST /api/edit (413 beyond).")
    ] = 4 << 20,
    max_image_pixels: Annotated[
        int, typer.Option(min=1, help="Most pixels of a decoded edit image or mask (413 beyond).")
    ] = 4096 * 4096,
    header_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds for a request's headers to arrive, however slowly (then 408, closed)."
        ),
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds for a request's body to arrive after its headers (then 408, closed)."
        ),
    ] = 60.0,
    keep_alive: Annotated[
        float, typer.Option(min=0.1, help="Seconds an idle connection stays open between requests.")
    ] = 5.0,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections at once; one more gets 503 and is closed.")
    ] = 128,
    allowed_hosts: Annotated[
        str,
        typer.Option(
            help="Comma-separated Host names the server answers (e.g. 'localhost,127.0.0.1,*.lan'); "
            "others get 400. Empty: any host."
        ),
    ] = "",
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Allow browser calls from this origin (repeatable). Off by default."),
    ] = None,
    safety_checker: Annotated[
        str | None, typer.Option(help="Prompt-safety hook 'module:function' (returns None or a reason).")
    ] = None,
    safety_model: Annotated[
        Path | None, typer.Option(help="Local transformers text-classification folder as safety hook.")
    ] = None,
    safety_labels: Annotated[
        str, typer.Option(help="Comma-separated labels of --safety-model that mean unsafe.")
    ] = "",
    safety_threshold: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Refuse when P(unsafe label) reaches this.")
    ] = 0.5,
    compile_: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="pipe.compile() and one warm-up image before serving (for GPUs: docs/performance.md).",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    lora: LoraOption = None,
) -> None:
    """Serve a browser UI and a JSON HTTP API for one model (127.0.0.1 only, unless --host says otherwise)."""
    try:
        import uvicorn

        from openhart.command_setup import compile_and_warm_up, load_model, resolve_device, resolve_dtype
        from openhart.serve.app import build_model_card, create_app
        from openhart.serve.guard import MAX_HEADER_BYTES
        from openhart.serve.protocol import ConnectionLimits, GuardedH11Protocol
        from openhart.serve.queue import GenerationQueue
        from openhart.serve.safety import build_safety_checker
        from openhart.serve.schema import ServeLimits
    except ImportError as error:
        raise DependencyError(
            f"the web extra is missing ({error.name}); install it with: pip install 'openhart[web]'"
        ) from error

    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise InvalidInputError(f"--log-level: unknown log level {log_level!r} (DEBUG, INFO, WARNING, ERROR)")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    _warn_if_exposed(host)

    try:
        limits = ServeLimits(
            max_prompt_chars=max_prompt_chars,
            max_num_images=max_num_images,
            max_steps=max_steps,
            max_guidance_scale=max_guidance,
            max_body_bytes=max_body_bytes,
            request_timeout_s=timeout,
            max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels,
        )
        connection_limits = ConnectionLimits(
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            keep_alive_s=keep_alive,
            max_connections=max_connections,
        )
        labels = [label.strip() for label in safety_labels.split(",") if label.strip()]
        safety = build_safety_checker(safety_checker, safety_model, labels, safety_threshold)
    except OpenHARTError:
        raise
    except (ValueError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from error

    torch_device = resolve_device(device.value)
    pipeline = load_model(
        model, torch_device, resolve_dtype(dtype.value, torch_device, model), random_weights=random_weights
    )
    if lora:
        apply_lora_options(pipeline, lora, model or DEFAULT_MODEL)
        pipeline.fuse_lora()  # a server samples many times: fused adapters cost nothing per call
    if compile_:
        compile_and_warm_up(pipeline)  # /health answers only once this is done
    name, weights = _describe_weights(model, random_weights)
    card = build_model_card(pipeline, name, weights, limits, safety)
    queue = GenerationQueue(
        pipeline,
        workers=workers,
        capacity=queue_size,
        max_batch_images=max_batch_images,
        torch_threads=threads or _auto_threads(torch_device.type, workers),
    )
    hosts = tuple(name.strip() for name in allowed_hosts.split(",") if name.strip())
    app = create_app(
        queue, card, limits, safety=safety, cors_origins=tuple(cors_origin or ()), allowed_hosts=hosts
    )

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=int(timeout + SHUTDOWN_GRACE_S),
        server_header=False,
        # h11 with deadlines and a connection cap (protocol.py); no WebSocket upgrades (none served).
        http=functools.partial(GuardedH11Protocol, limits=connection_limits),  # type: ignore[arg-type]
        ws="none",
        timeout_keep_alive=connection_limits.keep_alive_s,  # type: ignore[arg-type]
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,  # headers still arriving; the guard checks whole ones
    )
    server = uvicorn.Server(config)
    _keep_signals_from_killing_us()
    server.run()
    if not server.started:
        raise typer.Exit(1)  # uvicorn logged why (e.g. the port is taken)
    logger.info("stopped")


def _auto_threads(device_type: str, workers: int) -> int | None:
    """On CPU: the usable cores minus one (the HTTP event loop), split over the workers."""
    if device_type != "cpu":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, (cores - 1) // workers)


def _describe_weights(model: str | None, random_weights: bool = False) -> tuple[str, str]:
    """(name shown to clients, where the weights came from); a folder shows its name, not its path."""
    from openhart.loading import PACKAGED_WEIGHTS
    from openhart.presets import PRESETS

    name = model or DEFAULT_MODEL
    if Path(name).is_dir():
        return Path(name).resolve().name, "folder"
    if name in PRESETS and random_weights:
        return name, "preset-random"
    if (PACKAGED_WEIGHTS / name).is_dir():
        return name, "preset-trained"
    return name, "hub"  # a released preset's or a repo id's weights from the Hugging Face Hub


def _warn_if_exposed(host: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        logger.warning(
            "binding to %s: anyone who can reach this address can use the server (there is no authentication)",
            host,
        )


def _keep_signals_from_killing_us() -> None:
    """After a graceful shutdown uvicorn re-raises the signal it caught, to the handler that was in
    place before it started; with Python's defaults that kills the process (SIGTERM → status 143,
    SIGINT → KeyboardInterrupt). Handlers that only log make a clean stop exit with status 0."""

    def note(signum: int, frame: object) -> None:
        logger.info("received %s after shutdown", signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, note)


def main() -> None:
    app = typer.Typer(add_completion=False)
    app.command(cls=ErrorBoundaryCommand)(serve)  # the same one-line errors as ``openhart serve``
    app()


if __name__ == "__main__":
    main()
