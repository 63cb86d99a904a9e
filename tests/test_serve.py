"""``openhart serve``: a real server process on 127.0.0.1 (tiny preset, random weights).

Checked against the running process: PNG/JPEG images of the model's size, same seed → same
bytes, a table of 50+ bad inputs that each get a 4xx JSON error naming the field while the server
keeps serving, 503 + Retry-After when a one-slot queue is full, and SIGTERM finishing the
in-flight request before exiting with status 0. In process: batching keeps each image's seed,
timeouts give 504 and stop the abandoned work, the safety hooks, and the command's own errors.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from openhart.cli import app as openhart_app
from openhart.presets import build_pipeline
from openhart.serve.app import build_model_card, create_app
from openhart.serve.cli import _describe_weights, serve
from openhart.serve.queue import GenerationQueue, GenerationRequest, QueueClosed, QueueFull
from openhart.serve.safety import ClassifierSafetyChecker, build_safety_checker, load_callable
from openhart.serve.schema import MAX_SEED, ServeLimits

REPO = Path(__file__).resolve().parents[1]
HOOKS = """
def refuse_forbidden(prompt):
    return "mentions forbidden-word" if "forbidden-word" in prompt else None
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m openhart.serve.cli`` in a subprocess, ready once /health answers."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "openhart.serve.cli", "--port", str(self.port), "--device", "cpu", *args],
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                log = self.log()  # before stop() closes the file
                self.stop()
                raise RuntimeError(f"server not ready after 90 s:\n{log}")
            time.sleep(0.1)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.client.close()
        self._log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def hooks_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "serve_test_hooks.py").write_text(HOOKS)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory, hooks_dir) -> ServerProcess:
    logs = tmp_path_factory.mktemp("server")
    process = ServerProcess(
        [
            "--model",
            "tiny",
            "--random-weights",
            "--safety-checker",
            "serve_test_hooks:refuse_forbidden",
            "--log-level",
            "warning",
        ],
        logs / "server.log",
        env={"PYTHONPATH": f"{hooks_dir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
    )
    yield process
    assert process.stop() == 0, process.log()


def generate(server: ServerProcess, **body: Any) -> httpx.Response:
    return server.client.post("/api/generate", json={"prompt": "a red fox", **body})


def decode(data: str | bytes) -> Image.Image:
    raw = base64.b64decode(data, validate=True) if isinstance(data, str) else data
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


# ---------------------------------------------------------------------- a real server: what works
def test_health_model_card_and_openapi(server):
    health = server.client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny"
    assert health["queue"]["workers"] == 1 and health["queue"]["capacity"] == 16
    card = server.client.get("/api/model").json()
    assert card["name"] == "tiny" and card["weights"] == "preset-random"
    assert card["image_size"] == 32 and card["patch_nums"] == [1, 2, 3, 4, 6, 8]
    assert card["defaults"]["steps"] == 8 and card["limits"]["max_num_images"] == 4
    assert card["safety_checker"] == "callable: serve_test_hooks:refuse_forbidden"
    assert sum(card["parameters"].values()) > 1_000_000
    schema = server.client.get("/openapi.json").json()
    request_schema = schema["components"]["schemas"]["GenerateRequest"]
    assert request_schema["additionalProperties"] is False
    assert request_schema["properties"]["num_images"]["maximum"] == 4
    assert {"413", "415", "422", "503", "504"} <= set(schema["paths"]["/api/generate"]["post"]["responses"])
    # No Swagger page: it would load its scripts from a CDN.
    assert server.client.get("/docs").status_code == 404


def test_page_and_script_are_served_with_a_strict_policy(server):
    page = server.client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert 'id="prompt"' in page.text and "/static/app.js" in page.text
    script = server.client.get("/static/app.js")
    assert script.status_code == 200 and "/api/generate" in script.text
    assert script.headers["x-content-type-options"] == "nosniff"


def test_generate_returns_decodable_images_and_the_parameters_used(server):
    response = generate(server, seed=7, num_images=2, guidance_scale=3, steps=5, negative_prompt="blurry")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["parameters"] == {
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "seed": 7,
        "guidance_scale": 3.0,
        "steps": 5,
        "num_images": 2,
        "format": "base64",
    }
    assert [image["seed"] for image in result["images"]] == [7, 8]
    for image in result["images"]:
        decoded = decode(image["data"])
        assert decoded.format == "PNG" and decoded.size == (32, 32) and decoded.mode == "RGB"
        assert (image["width"], image["height"]) == (32, 32)
        assert np.asarray(decoded).std() > 1  # not a blank image
    assert result["timings"]["batch_images"] == 2 and result["timings"]["inference_s"] > 0


def _level_gap(png_a: str, png_b: str) -> int:
    """Largest pixel difference (0-255) between two base64 PNGs."""
    a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(x))), dtype=np.int16) for x in (png_a, png_b))
    return int(np.abs(a - b).max())


def test_same_seed_same_bytes_and_image_i_uses_seed_plus_i(server):
    first = generate(server, seed=123, num_images=2).json()["images"]
    again = generate(server, seed=123, num_images=2).json()["images"]
    assert [image["data"] for image in first] == [image["data"] for image in again]
    other = generate(server, seed=124).json()["images"][0]
    assert other["data"] != first[0]["data"]
    # Image 1 of seed 123 is seed 124's image 0, up to rounding: a batch's matmuls may round
    # differently from a single image's (seen on AMD EPYC), moving a pixel by one level.
    assert _level_gap(other["data"], first[1]["data"]) <= 1
    raw = generate(server, seed=123, format="png")
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png"
    assert _level_gap(base64.b64encode(raw.content).decode(), first[0]["data"]) <= 1
    assert raw.headers["x-openhart-seed"] == "123"
    assert json.loads(raw.headers["x-openhart-parameters"])["steps"] == 8
    jpeg = generate(server, seed=123, format="jpeg", prompt="un renard roux 🦊")
    assert jpeg.status_code == 200 and jpeg.headers["content-type"] == "image/jpeg"
    assert decode(jpeg.content).format == "JPEG" and decode(jpeg.content).size == (32, 32)
    assert json.loads(jpeg.headers["x-openhart-parameters"])["prompt"] == "un renard roux 🦊"


def test_random_seed_is_reported_and_reproduces(server):
    result = generate(server, seed=None).json()
    seed = result["parameters"]["seed"]
    assert isinstance(seed, int) and 0 <= seed <= MAX_SEED
    replay = generate(server, seed=seed).json()
    assert replay["images"][0]["data"] == result["images"][0]["data"]


def test_prompts_that_look_like_paths_are_just_text(server):
    # No field takes a path: such a prompt is drawn like any other and never opened.
    response = generate(server, prompt="../../../../etc/passwd", seed=1)
    assert response.status_code == 200
    assert "root:" not in response.text


# ---------------------------------------------------------------------- a real server: bad input
@dataclass(frozen=True)
class BadInput:
    name: str
    status: int
    field: str | None  # must appear in "detail"
    body: Any = None  # a JSON value (sent as JSON) ...
    raw: str | bytes | None = None  # ... or raw bytes
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    method: str = "POST"
    path: str = "/api/generate"


def _with(**fields: Any) -> dict[str, Any]:
    return {"prompt": "a red fox", **fields}


JSON = {"content-type": "application/json"}
BAD_INPUTS = [
    BadInput("empty prompt", 422, "prompt", {"prompt": ""}),
    BadInput("blank prompt", 422, "prompt", {"prompt": " \n\t "}),
    BadInput("100k-char prompt", 422, "prompt", {"prompt": "a" * 100_000}),
    BadInput("prompt is a number", 422, "prompt", {"prompt": 42}),
    BadInput("prompt is null", 422, "prompt", {"prompt": None}),
    BadInput("prompt is a list", 422, "prompt", {"prompt": ["a red fox"]}),
    BadInput("prompt is an object", 422, "prompt", {"prompt": {"text": "a red fox"}}),
    BadInput("prompt is true", 422, "prompt", {"prompt": True}),
    BadInput("prompt missing", 422, "prompt", {"seed": 1}),
    BadInput("prompt is a lone surrogate", 422, "prompt", raw='{"prompt": "\\ud800"}'),
    BadInput("prompt refused by the safety hook", 422, "prompt", {"prompt": "a forbidden-word fox"}),
    BadInput("100k-char negative prompt", 422, "negative_prompt", _with(negative_prompt="b" * 100_000)),
    BadInput("negative prompt is a number", 422, "negative_prompt", _with(negative_prompt=3)),
    BadInput("guidance NaN", 422, "guidance_scale", raw='{"prompt": "a", "guidance_scale": NaN}'),
    BadInput("guidance Infinity", 422, "guidance_scale", raw='{"prompt": "a", "guidance_scale": Infinity}'),
    BadInput("guidance -Infinity", 422, "guidance_scale", raw='{"prompt": "a", "guidance_scale": -Infinity}'),
    BadInput("guidance negative", 422, "guidance_scale", _with(guidance_scale=-1)),
    BadInput("guidance huge", 422, "guidance_scale", _with(guidance_scale=1e9)),
    BadInput("guidance is a string", 422, "guidance_scale", _with(guidance_scale="4.5")),
    BadInput("steps zero", 422, "steps", _with(steps=0)),
    BadInput("steps negative", 422, "steps", _with(steps=-5)),
    BadInput("steps huge", 422, "steps", _with(steps=1_000_000)),
    BadInput("steps fractional", 422, "steps", _with(steps=2.5)),
    BadInput("steps boolean", 422, "steps", _with(steps=True)),
    BadInput("steps NaN", 422, "steps", raw='{"prompt": "a", "steps": NaN}'),
    BadInput("num_images zero", 422, "num_images", _with(num_images=0)),
    BadInput("num_images negative", 422, "num_images", _with(num_images=-1)),
    BadInput("num_images huge", 422, "num_images", _with(num_images=10**9)),
    BadInput("num_images 1e400", 422, "num_images", raw='{"prompt": "a", "num_images": 1e400}'),
    BadInput("num_images is a string", 422, "num_images", _with(num_images="2")),
    BadInput("seed negative", 422, "seed", _with(seed=-1)),
    BadInput("seed 2**64", 422, "seed", _with(seed=2**64)),
    BadInput("seed fractional", 422, "seed", _with(seed=1.5)),
    BadInput("seed is a string", 422, "seed", _with(seed="abc")),
    BadInput("format unknown", 422, "format", _with(format="gif")),
    BadInput("format path-like", 422, "format", _with(format="../../etc/passwd")),
    BadInput("raw png of two images", 422, "num_images", _with(format="png", num_images=2)),
    BadInput("unknown field: model path", 422, "model", _with(model="/etc/passwd")),
    BadInput("unknown field: output path", 422, "output", _with(output="../../tmp/x.png")),
    BadInput("unknown field: device", 422, "device", _with(device="cuda")),
    BadInput("unknown field: nested", 422, "extra", _with(extra={"path": "/root"})),
    BadInput("malformed JSON", 400, "body", raw='{"prompt": "a red fox",}'),
    BadInput("truncated JSON", 400, "body", raw='{"prompt": '),
    BadInput("empty body", 422, "body", raw=b""),
    BadInput("body is an array", 422, "body", [1, 2]),
    BadInput("body is a string", 422, "body", "a red fox"),
    BadInput("body is null", 422, "body", raw="null"),
    BadInput("JSON nested 100k deep", 400, "body", raw="[" * 100_000 + "]" * 100_000),
    BadInput("5000-digit integer", 400, "body", raw='{"prompt": "a", "seed": ' + "9" * 5000 + "}"),
    BadInput("invalid UTF-8", 400, "body", raw=b'{"prompt": "\xff\xfe"}'),
    BadInput("2 MB body", 413, "body", raw='{"prompt": "' + "a" * 2_000_000 + '"}'),
    BadInput(
        "content-type text/plain",
        415,
        "content-type",
        raw='{"prompt": "a"}',
        headers={"content-type": "text/plain"},
    ),
    BadInput(
        "form-encoded",
        415,
        "content-type",
        raw="prompt=a",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    BadInput("no content-type", 415, "content-type", raw='{"prompt": "a"}', headers={}),
    BadInput("GET on the generate route", 405, None, method="GET", headers={}),
    BadInput(
        "path traversal", 404, None, method="GET", path="/static/..%2f..%2f..%2fetc%2fpasswd", headers={}
    ),
    BadInput("dot-dot path", 404, None, method="GET", path="/static/%2e%2e/%2e%2e/etc/passwd", headers={}),
    BadInput("unknown route", 404, None, method="GET", path="/api/models/../../etc/passwd", headers={}),
]


def test_the_bad_input_table_is_big_enough():
    assert len(BAD_INPUTS) >= 30
    assert len({case.name for case in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.name for case in BAD_INPUTS])
def test_bad_input_gets_a_json_4xx_and_the_server_keeps_serving(server, case):
    if case.raw is not None:
        content = case.raw.encode() if isinstance(case.raw, str) else case.raw
    elif case.method == "POST":
        content = json.dumps(case.body).encode()
    else:
        content = None
    response = server.client.request(case.method, case.path, content=content, headers=case.headers)
    assert response.status_code == case.status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    assert len(response.content) < 10_000  # errors never echo a huge input back
    if case.field is not None:
        assert case.field in detail, detail
    assert server.client.get("/health").json()["status"] == "ok"


def test_still_generating_after_the_bad_inputs(server):
    response = generate(server, seed=5)
    assert response.status_code == 200 and decode(response.json()["images"][0]["data"]).size == (32, 32)


# ---------------------------------------------------------------------- a real server: load, shutdown
def test_full_queue_gets_503_with_retry_after_then_sigterm_finishes_in_flight_and_exits_0(tmp_path):
    # One worker, one waiting slot; 1000 residual steps × 4 images keep the worker busy ~1 s.
    server = ServerProcess(
        [
            "--model",
            "tiny",
            "--random-weights",
            "--queue-size",
            "1",
            "--max-steps",
            "1000",
            "--log-level",
            "warning",
        ],
        tmp_path / "server.log",
    )
    try:
        heavy = {"prompt": "a red fox", "seed": 0, "steps": 1000, "num_images": 4}
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: server.client.post("/api/generate", json=heavy), range(16)))
        statuses = [response.status_code for response in responses]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 1 and statuses.count(503) >= 8, statuses
        for response in responses:
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
                assert "queue is full" in response.json()["detail"]
        health = server.client.get("/health").json()["queue"]
        assert health["rejected"] == statuses.count(503) and health["pending"] == 0
        assert generate(server, seed=1).status_code == 200  # serving again once the queue drained

        # SIGTERM while a request runs: it still gets its images, then the process exits 0.
        result: dict[str, httpx.Response] = {}
        worker = threading.Thread(
            target=lambda: result.setdefault("response", server.client.post("/api/generate", json=heavy))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while server.client.get("/health").json()["queue"]["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        worker.join(timeout=60)
        assert result["response"].status_code == 200
        assert len(result["response"].json()["images"]) == 4
        assert server.process.wait(timeout=30) == 0, server.log()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/health", timeout=2)
    finally:
        server.stop()


# ---------------------------------------------------------------------- in process: queue, timeouts
@pytest.fixture(scope="module")
def tiny():
    return build_pipeline("tiny", seed=0)


def _request(seed: int, num_images: int = 1, guidance_scale: float = 4.5) -> GenerationRequest:
    return GenerationRequest("a red fox", None, seed, guidance_scale, 8, num_images)


def test_batching_groups_compatible_requests_and_keeps_each_images_seed(tiny):
    queue = GenerationQueue(tiny, workers=1, capacity=8, max_batch_images=8)
    jobs = [
        queue.submit(_request(10, 2)),
        queue.submit(_request(20, guidance_scale=2.0)),
        queue.submit(_request(30)),
    ]
    queue.start()  # the three are waiting already: the first batch takes both compatible ones
    try:
        results = [job.future.result(timeout=30) for job in jobs]
    finally:
        queue.close()
    assert [result.batch_images for result in results] == [3, 1, 3]
    for job, result in zip(jobs, results, strict=True):
        request = job.request
        alone = tiny(
            [request.prompt] * request.num_images,
            guidance_scale=request.guidance_scale,
            generator=[torch.Generator().manual_seed(request.seed + i) for i in range(request.num_images)],
        ).images
        for png, expected in zip(result.images, alone, strict=True):
            batched = np.asarray(decode(png)).astype(int)
            # Batched kernels reduce in another order: at most one level off, in a few pixels.
            assert np.abs(batched - np.asarray(expected).astype(int)).max() <= 1
            assert (batched != np.asarray(expected)).mean() < 0.05


def test_queue_refuses_beyond_capacity_and_after_close(tiny):
    queue = GenerationQueue(tiny, capacity=2)  # no workers started: nothing drains
    waiting = [queue.submit(_request(1)), queue.submit(_request(2))]
    with pytest.raises(QueueFull) as full:
        queue.submit(_request(3))
    assert full.value.retry_after_s >= 1
    assert queue.stats()["rejected"] == 1 and queue.stats()["pending"] == 2
    queue.close(timeout_s=1)
    for job in waiting:
        assert isinstance(job.future.exception(timeout=1), QueueClosed)
    with pytest.raises(QueueClosed):
        queue.submit(_request(4))
    with pytest.raises(ValueError, match="capacity"):
        GenerationQueue(tiny, capacity=0)


class SlowPipeline:
    """Stands in for the model: calls back after each of many short stages, like the real one."""

    def __init__(self, real) -> None:
        self.real = real
        self.stopped = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __call__(self, prompts, stage_callback, **kwargs):
        try:
            for stage in range(500):
                time.sleep(0.01)
                stage_callback(f"stage_{stage}")
        except Exception:
            self.stopped.set()
            raise
        return self.real(prompts, **kwargs)


def test_timeout_gives_504_and_stops_the_abandoned_work(tiny):
    from fastapi.testclient import TestClient

    limits = ServeLimits(request_timeout_s=0.3)
    slow = SlowPipeline(tiny)
    queue = GenerationQueue(slow, workers=1, capacity=4)
    app = create_app(queue, build_model_card(tiny, "tiny", "preset-random", limits), limits)
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.post("/api/generate", json={"prompt": "a red fox", "seed": 0})
        assert response.status_code == 504 and "0.3 s" in response.json()["detail"]
        assert time.monotonic() - started < 3
        assert slow.stopped.wait(timeout=2)  # the worker dropped the job at its next stage
        deadline = time.monotonic() + 2
        while client.get("/health").json()["queue"]["running"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get("/health").json()["queue"]["running"] == 0


def test_cors_is_off_by_default_and_on_for_named_origins(tiny):
    from fastapi.testclient import TestClient

    limits = ServeLimits()
    card = build_model_card(tiny, "tiny", "preset-random", limits)
    preflight = {"Origin": "http://example.test", "Access-Control-Request-Method": "POST"}
    closed = create_app(GenerationQueue(tiny), card, limits)
    opened = create_app(GenerationQueue(tiny), card, limits, cors_origins=("http://example.test",))
    with TestClient(closed) as client:
        response = client.get("/health", headers={"Origin": "http://example.test"})
        assert "access-control-allow-origin" not in response.headers
    with TestClient(opened) as client:
        response = client.options("/api/generate", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "http://example.test"
        response = client.post("/api/generate", content="x", headers={"Origin": "http://example.test"})
        assert response.status_code == 415  # the guard's early answer carries the CORS header too
        assert response.headers["access-control-allow-origin"] == "http://example.test"
        other = client.get("/health", headers={"Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------------- in process: safety, command
def test_safety_callable(hooks_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(hooks_dir))
    checker = build_safety_checker("serve_test_hooks:refuse_forbidden")
    assert checker("a red fox") is None
    assert checker("a forbidden-word fox") == "mentions forbidden-word"
    assert build_safety_checker() is None  # off by default
    for spec, message in (
        ("no_colon", "module:function"),
        ("no_such_module_xyz:check", "cannot import"),
        ("os:no_such_function", "no attribute"),
        ("os:sep", "not callable"),
    ):
        with pytest.raises(ValueError, match=message):
            load_callable(spec)


def test_safety_classifier_from_a_local_folder(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "fox"]) + "\n")
    config = BertConfig(
        vocab_size=8,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label={0: "safe", 1: "unsafe"},
        label2id={"safe": 0, "unsafe": 1},
    )
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # a head that always says "unsafe" with p = sigmoid(4) ≈ 0.982
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([0.0, 4.0]))
    folder = tmp_path / "classifier"
    model.save_pretrained(folder)
    BertTokenizer(str(vocab)).save_pretrained(folder)

    strict = ClassifierSafetyChecker(folder, ["unsafe"], threshold=0.5)
    assert strict.probabilities("a red fox")[1] == pytest.approx(
        torch.sigmoid(torch.tensor(4.0)).item(), abs=1e-5
    )
    assert "unsafe" in strict("a red fox")
    assert ClassifierSafetyChecker(folder, ["unsafe"], threshold=0.99)("a red fox") is None
    with pytest.raises(ValueError, match=r"not labels of this model; it has \['safe', 'unsafe'\]"):
        ClassifierSafetyChecker(folder, ["toxic"])
    with pytest.raises(ValueError, match="name the label"):
        ClassifierSafetyChecker(folder, [])
    with pytest.raises(FileNotFoundError, match="safety_model"):
        ClassifierSafetyChecker(tmp_path / "missing", ["unsafe"])


def test_compiled_server_warms_up_first_and_gives_the_same_images(server, tmp_path):
    compiled = ServerProcess(
        ["--model", "tiny", "--random-weights", "--compile", "--log-level", "info"], tmp_path / "compiled.log"
    )
    try:
        assert "compiled and warmed up in" in compiled.log()  # before /health answered
        images = [generate(process, seed=3).json()["images"][0]["data"] for process in (server, compiled)]
        eager, fast = (np.asarray(decode(image), dtype=np.int16) for image in images)
        assert eager.shape == fast.shape
        assert np.abs(eager - fast).max() <= 2  # compiled kernels round differently, by a level or two
    finally:
        assert compiled.stop() == 0, compiled.log()


def test_serve_command_errors_and_weights_description(tmp_path):
    app = typer.Typer()
    app.command()(serve)
    runner = CliRunner(env={"COLUMNS": "400"})
    result = runner.invoke(openhart_app, ["serve", "--model", "no-such-model"])
    assert result.exit_code == 4 and "neither a model folder nor a preset" in result.output
    result = runner.invoke(app, ["--model", "tiny", "--random-weights", "--safety-checker", "no_colon"])
    assert result.exit_code == 2 and "module:function" in result.output
    result = runner.invoke(app, ["--model", "tiny", "--random-weights", "--queue-size", "0"])
    assert result.exit_code == 2 and "queue-size" in result.output
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert _describe_weights(str(folder)) == ("my-model", "folder")  # a name, never the path
    assert _describe_weights("tiny", random_weights=True) == ("tiny", "preset-random")
    assert _describe_weights("emoji-64") == ("emoji-64", "preset-trained")
    assert ServeLimits().max_num_images == 4
    with pytest.raises(ValueError, match="max_steps"):
        ServeLimits(max_steps=0)
