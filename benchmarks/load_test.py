"""Load test of ``openhart serve``: many concurrent clients against a real server process.

python benchmarks/load_test.py --model tiny --clients 64 --duration 20
python benchmarks/load_test.py --model tiny --clients 64 --duration 20 --max-batch-images 8

Starts ``python -m openhart.serve.cli`` on a free 127.0.0.1 port, warms it up with one request,
then runs ``--clients`` threads for ``--duration`` seconds. Each client loops: POST /api/generate
(random seed), record the status and latency; after a 503 it pauses only ``--pause-after-503``
seconds (not the Retry-After) so that the queue stays full and the 503 path is exercised.
Meanwhile the server's resident memory (VmRSS in /proc/<pid>/status) is sampled.

Passes (exit 0) when every request was answered 200 or 503 (no other status, no connection
error) and the server's RSS grew by less than ``--max-rss-growth-mib`` over the run; prints
counts, throughput, p50/p95/p99 latency and RSS, and writes them with ``--json``.
Not a test: numbers depend on the machine (docs/serve.md has the ones measured here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

logger = logging.getLogger("load_test")
REPO = Path(__file__).resolve().parents[1]
PROMPTS = ("a red fox in the snow", "a blue car", "an apple on a table", "a lighthouse at night")


@dataclass
class Outcome:
    status: int  # 0: no HTTP answer (connection error, client timeout)
    seconds: float
    error: str = ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024  # kB → MiB
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "openhart.serve.cli",
        "--model", args.model, "--device", args.device, "--port", str(port),
        "--workers", str(args.workers), "--queue-size", str(args.queue_size),
        "--max-batch-images", str(args.max_batch_images), "--timeout", str(args.timeout),
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with status {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("server not ready after 120 s")


def client_loop(url: str, index: int, stop_at: float, args: argparse.Namespace, out: list[Outcome]) -> None:
    rng = np.random.default_rng(index)
    with httpx.Client(base_url=url, timeout=args.timeout + 30) as client:
        while time.monotonic() < stop_at:
            body = {
                "prompt": PROMPTS[index % len(PROMPTS)],
                "seed": int(rng.integers(0, 2**31)),
                "num_images": args.num_images,
                "steps": args.steps,
            }
            started = time.perf_counter()
            try:
                response = client.post("/api/generate", json=body)
                outcome = Outcome(response.status_code, time.perf_counter() - started)
                if response.status_code not in (200, 503):
                    outcome.error = response.text[:200]
            except httpx.HTTPError as error:
                outcome = Outcome(0, time.perf_counter() - started, repr(error))
            out.append(outcome)  # list.append is atomic under the GIL
            if outcome.status == 503:
                # Polite clients wait the Retry-After the server asked for; --hammer ones barely pause.
                wait = args.pause_after_503 if args.hammer else float(response.headers.get("retry-after", 1))
                time.sleep(max(0.0, min(wait, stop_at - time.monotonic())))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    array = np.asarray(values)
    return {
        "p50_s": float(np.percentile(array, 50)),
        "p95_s": float(np.percentile(array, 95)),
        "p99_s": float(np.percentile(array, 99)),
        "max_s": float(array.max()),
    }


def run(args: argparse.Namespace) -> dict:
    process, url = start_server(args)
    try:
        warm = httpx.post(f"{url}/api/generate", json={"prompt": "warm up", "seed": 0}, timeout=120)
        warm.raise_for_status()
        rss_start = rss_mib(process.pid)
        samples: list[float] = []
        outcomes: list[Outcome] = []
        stop_at = time.monotonic() + args.duration
        clients = [
            threading.Thread(target=client_loop, args=(url, i, stop_at, args, outcomes), daemon=True)
            for i in range(args.clients)
        ]
        started = time.perf_counter()
        for thread in clients:
            thread.start()
        while any(thread.is_alive() for thread in clients):
            samples.append(rss_mib(process.pid))
            time.sleep(0.25)
        elapsed = time.perf_counter() - started
        health = httpx.get(f"{url}/health", timeout=10).json()
        rss_end = rss_mib(process.pid)
    finally:
        process.terminate()
        exit_status = process.wait(timeout=60)

    statuses = Counter(outcome.status for outcome in outcomes)
    ok = [outcome.seconds for outcome in outcomes if outcome.status == 200]
    busy = [outcome.seconds for outcome in outcomes if outcome.status == 503]
    errors = [outcome for outcome in outcomes if outcome.status not in (200, 503)]
    rss_max = max([*samples, rss_end])
    report = {
        "model": args.model,
        "clients": args.clients,
        "duration_s": round(elapsed, 2),
        "workers": args.workers,
        "queue_size": args.queue_size,
        "max_batch_images": args.max_batch_images,
        "num_images": args.num_images,
        "hammer": args.hammer,
        "requests": len(outcomes),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "images_per_s": round(len(ok) * args.num_images / elapsed, 2),
        "latency_200": {key: round(value, 4) for key, value in percentiles(ok).items()},
        "latency_503": {key: round(value, 4) for key, value in percentiles(busy).items()},
        "rss_mib": {"start": round(rss_start, 1), "max": round(rss_max, 1), "end": round(rss_end, 1)},
        "server_queue": health["queue"],
        "server_exit_status": exit_status,
        "errors": [f"{outcome.status}: {outcome.error}" for outcome in errors[:5]],
    }
    report["passed"] = (
        not errors and rss_max - rss_start < args.max_rss_growth_mib and exit_status == 0 and len(ok) > 0
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=20.0, help="Seconds of load.")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--max-batch-images", type=int, default=1)
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=60.0, help="The server's per-request timeout.")
    parser.add_argument(
        "--hammer",
        action="store_true",
        help="Ignore Retry-After: pause only --pause-after-503 s after a 503.",
    )
    parser.add_argument("--pause-after-503", type=float, default=0.05)
    parser.add_argument("--max-rss-growth-mib", type=float, default=256.0)
    parser.add_argument("--json", type=Path, help="Also write the report here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would slow the clients

    report = run(args)
    logger.info(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not report["passed"]:
        logger.error(
            "FAILED: a request was not answered 200/503, RSS grew too much, or the server did not exit 0"
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
