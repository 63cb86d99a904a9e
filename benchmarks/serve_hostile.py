"""``openhart serve`` under hostile clients: slow connections, hostile requests, a fuzz, memory.

python benchmarks/serve_hostile.py --json benchmarks/results/serve_hostile_cpu_2026-11-29.json
python benchmarks/serve_hostile.py --server-root /path/to/other/checkout --no-server-options \\
    --server-args=--random-weights --requests 200   # the same clients against another version

Starts ``python -m openhart.serve.cli --model tiny`` on a free 127.0.0.1 port (from
``--server-root``, this checkout by default) and measures, in order:

1. slow clients: ``--slow-clients`` sockets (a third each: partial headers, a body shorter than its
   Content-Length, a chunked body announcing 2**64 bytes) trickling a byte every 0.2 s; how many
   the server still holds ``--deadline`` + 1.5 s after the last one connected, and the server's
   open sockets before and after;
2. the hostile-request table of tests/hostile_clients.py: status and size of every answer, whether
   one quotes a planted value;
3. a Hypothesis fuzz of ``--fuzz`` requests: how many got a 5xx;
4. resident memory (VmRSS) over ``--requests`` mixed requests (the hostile table and a valid
   generation, in turn), after one warm-up round;
5. Retry-After on a cold server: 48 concurrent requests into a 16-slot queue, against the
   inference time the answers report.

Prints the figures and writes them with ``--json``. Not a test: times depend on the machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.hostile_clients import (  # noqa: E402  (the repository root first, for tests/)
    CONTENT_TYPES,
    FUZZ_BODIES,
    HOSTILE_REQUESTS,
    MARKER,
    exchange,
    open_sockets,
    rss_bytes,
    slowloris,
)

logger = logging.getLogger("serve_hostile")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, options: list[str], log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "openhart.serve.cli",
        "--model",
        "tiny",
        "--random-weights",
        "--device",
        "cpu",
    ]
    command += ["--port", str(port), "--log-level", "error", *options]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    log = open(log_path, "wb")  # noqa: SIM115 (the server writes to it until it stops)
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process, port
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("server not ready after 120 s")


def measure_slow_clients(process: subprocess.Popen, port: int, clients: int, deadline_s: float) -> dict:
    before = open_sockets(process.pid)
    report = slowloris(port, clients, deadline_s=deadline_s, grace_s=1.5)
    time.sleep(1.0)
    return {
        "clients": clients,
        "deadline_s": deadline_s,
        "held_past_deadline": report.held_past_deadline,
        "closed_by_server": report.closed_by_server,
        "longest_open_s": round(report.longest_open_s, 2),
        "answers": report.answers,
        "server_sockets_before": before,
        "server_sockets_after": open_sockets(process.pid),
    }


def measure_hostile_requests(port: int) -> dict:
    answers = {}
    for name, raw in HOSTILE_REQUESTS.items():
        status, headers, body = exchange(port, raw)
        answers[name] = {
            "status": status,
            "bytes": len(body),
            "json": headers.get("content-type") == "application/json",
            "quotes_input": MARKER.encode() in body,
        }
    return {
        "requests": len(answers),
        "max_error_bytes": max(answer["bytes"] for answer in answers.values()),
        "non_4xx": sorted(name for name, answer in answers.items() if not 400 <= answer["status"] < 500),
        "not_json": sorted(name for name, answer in answers.items() if not answer["json"]),
        "quoting_input": sorted(name for name, answer in answers.items() if answer["quotes_input"]),
        "answers": answers,
    }


def measure_fuzz(port: int, examples: int) -> dict:
    statuses: dict[int, int] = {}
    largest_error = 0
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(
        path=st.sampled_from(["/api/generate", "/api/edit"]),
        method=st.sampled_from(["POST"] * 8 + ["GET", "PUT"]),
        body=FUZZ_BODIES,
        content_type=CONTENT_TYPES,
    )
    def one_request(path: str, method: str, body: bytes, content_type: str) -> None:
        nonlocal largest_error
        response = client.request(method, path, content=body, headers={"content-type": content_type})
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code >= 400:
            largest_error = max(largest_error, len(response.content))

    started = time.perf_counter()
    one_request()
    client.close()
    return {
        "requests": sum(statuses.values()),
        "status_5xx": sum(count for status, count in statuses.items() if status >= 500),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "max_error_bytes": largest_error,
        "seconds": round(time.perf_counter() - started, 1),
    }


def measure_memory(process: subprocess.Popen, port: int, requests: int) -> dict:
    valid = json.dumps({"prompt": "a red fox", "seed": 1, "steps": 1}).encode()
    mix = [*HOSTILE_REQUESTS.values()]
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)

    def send(index: int) -> None:
        if index % (len(mix) + 1) == len(mix):
            client.post("/api/generate", content=valid, headers={"content-type": "application/json"})
        else:
            exchange(port, mix[index % (len(mix) + 1)])

    for index in range(len(mix) + 1):  # warm-up round
        send(index)
    before = peak = rss_bytes(process.pid)
    started = time.perf_counter()
    for index in range(requests):
        send(index)
        if index % 50 == 0:
            peak = max(peak, rss_bytes(process.pid))
    after = rss_bytes(process.pid)
    client.close()
    return {
        "requests": requests,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "rss_peak_mib": round(max(peak, after) / 2**20, 1),
        "rss_growth_mib": round((after - before) / 2**20, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


def measure_retry_after(root: Path, options: list[str], log_path: Path) -> dict:
    process, port = start_server(root, ["--queue-size", "16", *options], log_path)
    try:
        body = {"prompt": "a red fox", "seed": 0}
        with ThreadPoolExecutor(48) as pool, httpx.Client(timeout=120) as client:
            url = f"http://127.0.0.1:{port}/api/generate"
            responses = list(pool.map(lambda _: client.post(url, json=body), range(48)))
        retry = [int(r.headers["retry-after"]) for r in responses if r.status_code == 503]
        inference = [r.json()["timings"]["inference_s"] for r in responses if r.status_code == 200]
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {
        "requests": 48,
        "queue_size": 16,
        "refused_503": len(retry),
        "retry_after_s": sorted(set(retry)),
        "inference_s_median": round(sorted(inference)[len(inference) // 2], 4) if inference else None,
        "inference_s_max": round(max(inference), 4) if inference else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server-root", type=Path, default=REPO, help="Checkout whose server is measured.")
    parser.add_argument(
        "--no-server-options", action="store_true", help="Start it without the options below."
    )
    parser.add_argument("--server-args", default="", help="More server options, e.g. '--random-weights'.")
    parser.add_argument("--deadline", type=float, default=2.0, help="--header-timeout and --body-timeout.")
    parser.add_argument("--max-connections", type=int, default=600)
    parser.add_argument("--slow-clients", type=int, default=500)
    parser.add_argument("--fuzz", type=int, default=1000, help="Fuzzed requests.")
    parser.add_argument("--requests", type=int, default=2000, help="Mixed requests of the memory run.")
    parser.add_argument("--json", type=Path, help="Write the results here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise

    options = [] if args.no_server_options else [
        "--header-timeout", str(args.deadline),
        "--body-timeout", str(args.deadline),
        "--max-connections", str(args.max_connections),
    ]  # fmt: skip
    options += shlex.split(args.server_args)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "serve_hostile_server.log"
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu": _cpu_name(),
            "cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "server_root": str(args.server_root),
        "server_options": options,
    }
    process, port = start_server(args.server_root, options, log_path)
    try:
        results["slow_clients"] = measure_slow_clients(process, port, args.slow_clients, args.deadline)
        logger.info("slow clients: %s", results["slow_clients"])
        results["hostile_requests"] = measure_hostile_requests(port)
        summary = {k: v for k, v in results["hostile_requests"].items() if k != "answers"}
        logger.info("hostile requests: %s", summary)
        results["fuzz"] = measure_fuzz(port, args.fuzz)
        logger.info("fuzz: %s", results["fuzz"])
        results["memory"] = measure_memory(process, port, args.requests)
        logger.info("memory: %s", results["memory"])
    finally:
        process.terminate()
        process.wait(timeout=60)
    results["retry_after_cold"] = measure_retry_after(
        args.server_root, shlex.split(args.server_args), log_path
    )
    logger.info("retry-after on a cold server: %s", results["retry_after_cold"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
