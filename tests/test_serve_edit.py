"""``POST /api/edit`` on a real server process on 127.0.0.1 (tiny preset, random weights).

Checked against the running process: edits come back at the input's size with the input's own
pixels outside the mask, same seed → same bytes, PNG/JPEG/WebP and data: URLs are read, and a
table of hostile inputs (not an image whatever its name, truncated, animated, CMYK, a mask of
another size, over the byte or pixel limit, bad options) each get a 4xx naming the field while
the server keeps serving.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from openhart.presets import build_pipeline
from tests.test_serve import ServerProcess, decode

MAX_IMAGE_BYTES = 64 * 1024
MAX_IMAGE_PIXELS = 500 * 500


def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return base64.b64encode(buffer.getvalue()).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PIXELS = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)  # H 40, W 48
SOURCE = Image.fromarray(PIXELS)
MASK_ARRAY = np.zeros((40, 48), np.uint8)
MASK_ARRAY[10:30, 12:36] = 255
MASK = Image.fromarray(MASK_ARRAY)
OUTSIDE = np.ones((40, 48), bool)
OUTSIDE[9:31, 11:37] = False  # the mask grown by the default 1 px seam (1% of 48 px, at least 1)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ServerProcess:
    logs = tmp_path_factory.mktemp("edit-server")
    process = ServerProcess(
        [
            "--model",
            "tiny",
            "--random-weights",
            "--log-level",
            "warning",
            "--max-image-bytes",
            str(MAX_IMAGE_BYTES),
            "--max-image-pixels",
            str(MAX_IMAGE_PIXELS),
        ],
        logs / "server.log",
    )
    yield process
    assert process.stop() == 0, process.log()


def edit(server: ServerProcess, **body: Any):
    fields = {"prompt": "a red hat", "image": encoded(SOURCE), "mask": encoded(MASK), **body}
    return server.client.post("/api/edit", json={k: v for k, v in fields.items() if v is not ...})


def test_edit_keeps_the_outside_and_is_seeded(server):
    response = edit(server, seed=3, num_images=2)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["parameters"] == {
        "prompt": "a red hat",
        "negative_prompt": None,
        "seed": 3,
        "guidance_scale": 4.5,
        "steps": 8,
        "num_images": 2,
        "format": "base64",
        "strength": 1.0,
        "paste_back": True,
        "width": 48,
        "height": 40,
    }
    images = [np.asarray(decode(image["data"])) for image in result["images"]]
    assert [image["seed"] for image in result["images"]] == [3, 4]
    for image in images:
        assert image.shape == (40, 48, 3)
        assert np.array_equal(image[OUTSIDE], PIXELS[OUTSIDE])
        assert not np.array_equal(image[12:28, 14:34], PIXELS[12:28, 14:34])
    assert not np.array_equal(images[0], images[1])
    again = edit(server, seed=3).json()["images"][0]["data"]
    assert again == result["images"][0]["data"]  # same seed, same bytes


def test_formats_data_urls_and_variations(server):
    jpeg = edit(server, seed=1, image=encoded(SOURCE, "JPEG", quality=95))
    webp = edit(server, seed=1, image=encoded(SOURCE, "WEBP", lossless=True))
    url = edit(
        server,
        seed=1,
        image="data:image/png;base64," + encoded(SOURCE),
        mask="data:image/png;base64," + encoded(MASK),
    )
    plain = edit(server, seed=1)
    for response in (jpeg, webp, url, plain):
        assert response.status_code == 200, response.text
    assert url.json()["images"] == plain.json()["images"]
    assert webp.json()["images"] == plain.json()["images"]  # lossless: the same pixels
    # No mask: strength 0 forces every scale, so the result is the tokenizer's reconstruction (the
    # server's tiny preset is build_pipeline("tiny", seed=0)); 0.5 samples the finer half.
    kept = edit(server, seed=2, mask=None, strength=0.0)
    assert kept.status_code == 200, kept.text
    local = build_pipeline("tiny", seed=0).edit("a red hat", SOURCE, strength=0.0).images[0]
    served = np.asarray(decode(kept.json()["images"][0]["data"])).astype(int)
    assert np.abs(served - np.asarray(local, dtype=int)).max() <= 1  # thread counts may differ
    assert not np.array_equal(served, PIXELS)
    varied = edit(server, seed=2, mask=None, strength=0.5)
    varied = np.asarray(decode(varied.json()["images"][0]["data"])).astype(int)
    assert np.abs(varied - served).max() > 20


def test_openapi_documents_the_edit_route(server):
    schema = server.client.get("/openapi.json").json()
    post = schema["paths"]["/api/edit"]["post"]
    assert {"413", "415", "422", "503", "504"} <= set(post["responses"])
    request = schema["components"]["schemas"]["EditRequest"]
    assert request["additionalProperties"] is False
    assert {"image", "mask", "strength", "paste_back", "prompt", "seed"} <= set(request["properties"])
    assert str(MAX_IMAGE_BYTES) in request["properties"]["image"]["description"]
    assert server.client.get("/api/model").json()["limits"]["max_image_pixels"] == MAX_IMAGE_PIXELS


def _png(data: np.ndarray, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _bad_files() -> dict[str, str]:
    png = _png(PIXELS)
    frames = io.BytesIO()
    SOURCE.save(frames, format="PNG", save_all=True, append_images=[Image.fromarray(255 - PIXELS)])
    gif = io.BytesIO()
    SOURCE.save(gif, format="GIF")
    cmyk = io.BytesIO()
    SOURCE.convert("CMYK").save(cmyk, format="JPEG")
    bomb = _png(np.zeros((1000, 1000), np.uint8))  # 1 M pixels in a few kB
    noise = np.random.default_rng(1).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    return {
        "truncated": b64(png[: len(png) // 2]),
        "animated": b64(frames.getvalue()),
        "gif": b64(gif.getvalue()),
        "cmyk": b64(cmyk.getvalue()),
        "text": b64(b"GIF89a? no: just text pretending"),
        "bomb": b64(bomb),
        "big": b64(_png(noise)),  # ~77 kB of incompressible pixels, over 64 kB
        "small mask": encoded(MASK.resize((24, 20))),
        "sixteen-bit": b64(_png(np.zeros((8, 8), np.uint16))),
    }


BAD = _bad_files()
BAD_EDITS = [
    ("image missing", 422, "image", {"image": ...}),
    ("image empty", 422, "image", {"image": ""}),
    ("image is a number", 422, "image", {"image": 7}),
    ("image not base64", 422, "image", {"image": "%%%not base64%%%"}),
    ("image is text", 422, "image", {"image": BAD["text"]}),
    ("image is a GIF", 422, "image", {"image": BAD["gif"]}),
    ("image truncated", 422, "image", {"image": BAD["truncated"]}),
    ("image animated", 422, "image", {"image": BAD["animated"]}),
    ("image CMYK", 422, "image", {"image": BAD["cmyk"]}),
    ("image 16-bit", 422, "image", {"image": BAD["sixteen-bit"]}),
    ("image over the byte limit", 413, "image", {"image": BAD["big"]}),
    ("image over the pixel limit", 413, "image", {"image": BAD["bomb"]}),
    ("image data URL not base64", 422, "image", {"image": "data:image/png," + BAD["truncated"]}),
    ("mask of another size", 422, "mask", {"mask": BAD["small mask"]}),
    ("mask truncated", 422, "mask", {"mask": BAD["truncated"]}),
    ("mask over the pixel limit", 413, "mask", {"mask": BAD["bomb"]}),
    ("mask animated", 422, "mask", {"mask": BAD["animated"]}),
    ("strength over 1", 422, "strength", {"strength": 1.5}),
    ("strength a string", 422, "strength", {"strength": "0.5"}),
    ("paste_back a string", 422, "paste_back", {"paste_back": "yes"}),
    ("num_images too many", 422, "num_images", {"num_images": 99}),
    ("prompt blank", 422, "prompt", {"prompt": "  "}),
    ("unknown field", 422, "mask_image", {"mask_image": BAD["small mask"]}),
]


@pytest.mark.parametrize(
    ("status", "field", "body"), [c[1:] for c in BAD_EDITS], ids=[c[0] for c in BAD_EDITS]
)
def test_bad_edit_gets_a_4xx_naming_the_field_and_the_server_keeps_serving(server, status, field, body):
    response = edit(server, **body)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert field in detail, detail
    assert len(response.content) < 10_000  # errors never echo the image back
    assert server.client.get("/health").json()["status"] == "ok"


def test_body_and_content_type_limits_of_the_edit_route(server):
    huge = json.dumps({"prompt": "a", "image": "A" * (2 << 20)})  # over 1 MiB + two 64 kB images
    response = server.client.post("/api/edit", content=huge, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "body" in response.json()["detail"]
    response = server.client.post("/api/edit", content=b"image=...", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "content-type" in response.json()["detail"]


def test_still_editing_after_the_bad_inputs(server):
    response = edit(server, seed=9)
    assert response.status_code == 200 and decode(response.json()["images"][0]["data"]).size == (48, 40)


# ----------------------------------------------------------------- multipart/form-data uploads
def png_bytes(image: Image.Image) -> bytes:
    return base64.b64decode(encoded(image))


def upload(
    server: ServerProcess,
    data: dict[str, Any] | None = None,
    files: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A multipart edit: prompt, image and mask by default; a value of ``...`` drops that part."""
    fields = {"prompt": "a red hat", **(data or {})}
    parts = {
        "image": ("in.png", png_bytes(SOURCE), "image/png"),
        "mask": ("m.png", png_bytes(MASK)),
        **(files or {}),
    }
    return server.client.post(
        "/api/edit",
        data={k: v for k, v in fields.items() if v is not ...},
        files={k: v for k, v in parts.items() if v is not ...},
        headers=headers,
    )


def test_multipart_edit_equals_the_json_edit(server):
    options = {"seed": 5, "num_images": 2, "guidance_scale": 2.0, "steps": 4, "paste_back": False}
    as_json = edit(server, **options)
    as_form = upload(server, {key: str(value).lower() for key, value in options.items()})
    assert as_json.status_code == 200, as_json.text
    assert as_form.status_code == 200, as_form.text
    assert as_form.json()["parameters"] == as_json.json()["parameters"]
    assert as_form.json()["parameters"]["paste_back"] is False
    assert as_form.json()["images"] == as_json.json()["images"]  # same PNG bytes, image for image
    # Without a mask (variations): the same again, with the strength read from the form's text.
    as_json = edit(server, seed=2, mask=None, strength=0.5)
    as_form = upload(server, {"seed": "2", "strength": "0.5"}, {"mask": ...})
    assert as_form.status_code == 200, as_form.text
    assert as_form.json()["images"] == as_json.json()["images"]
    assert as_form.json()["parameters"]["strength"] == 0.5


def _bad_uploads() -> list[tuple[str, int, str, dict[str, Any], dict[str, Any]]]:
    raw = {name: base64.b64decode(text) for name, text in BAD.items()}
    marker = b"SECRET-INPUT"
    return [
        # (case, status, field named, text fields, file parts)
        ("image missing", 422, "image", {}, {"image": ...}),
        ("image a text field", 422, "image", {"image": "iVBORw0KGgo="}, {"image": ...}),
        ("image not an image", 422, "image", {}, {"image": ("in.png", b"hello " + marker, "image/png")}),
        ("image empty", 422, "image", {}, {"image": ("in.png", b"", "image/png")}),
        ("image truncated PNG", 422, "image", {}, {"image": ("in.png", raw["truncated"])}),
        ("image a GIF", 422, "image", {}, {"image": ("in.png", raw["gif"], "image/png")}),
        ("image animated PNG", 422, "image", {}, {"image": ("in.png", raw["animated"])}),
        ("image CMYK JPEG", 422, "image", {}, {"image": ("in.jpg", raw["cmyk"])}),
        ("image over the byte limit", 413, "image", {}, {"image": ("in.png", raw["big"])}),
        ("image over the pixel limit", 413, "image", {}, {"image": ("in.png", raw["bomb"])}),
        ("mask of another size", 422, "mask", {}, {"mask": ("m.png", raw["small mask"])}),
        ("mask truncated", 422, "mask", {}, {"mask": ("m.png", raw["truncated"])}),
        ("mask a text field", 422, "mask", {"mask": "0"}, {"mask": ...}),
        ("unknown file part", 422, "mask_image", {}, {"mask_image": ("m.png", png_bytes(MASK))}),
        ("unknown text field", 422, "colour", {"colour": "red"}, {}),
        ("strength not a number", 422, "strength", {"strength": marker.decode()}, {}),
        ("strength over 1", 422, "strength", {"strength": "1.5"}, {}),
        ("strength NaN", 422, "strength", {"strength": "nan"}, {}),
        ("seed not an integer", 422, "seed", {"seed": "1.5"}, {}),
        ("num_images too many", 422, "num_images", {"num_images": "99"}, {}),
        ("paste_back not a boolean", 422, "paste_back", {"paste_back": "maybe"}, {}),
        ("prompt missing", 422, "prompt", {"prompt": ...}, {}),
        ("prompt blank", 422, "prompt", {"prompt": "  "}, {}),
        ("prompt a file", 422, "prompt", {"prompt": ...}, {"prompt": ("p.txt", b"a red hat")}),
        ("seed given twice", 422, "seed", {"seed": ["1", "2"]}, {}),
    ]


BAD_UPLOADS = _bad_uploads()


@pytest.mark.parametrize(
    ("status", "field", "data", "files"), [c[1:] for c in BAD_UPLOADS], ids=[c[0] for c in BAD_UPLOADS]
)
def test_bad_upload_gets_a_4xx_naming_the_field_and_the_server_keeps_serving(
    server, status, field, data, files
):
    response = upload(server, data, files)
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert detail.startswith(field) or f"; {field}" in detail, detail
    assert len(response.content) <= 4096 and b"SECRET-INPUT" not in response.content
    assert "Traceback" not in server.log()
    assert server.client.get("/health").json()["status"] == "ok"


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "x-boundary") -> bytes:
    """A hand-built body, for what a client library will not send (no boundary, huge, many parts)."""
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value + b"\r\n"
        for name, value in parts
    )
    return body + f"--{boundary}--\r\n".encode()


def test_malformed_and_oversize_multipart_bodies(server):
    form = "multipart/form-data; boundary=x-boundary"
    cases = [
        # (case, body, content type, status, field)
        ("oversize body", _multipart([("prompt", b"a" * (2 << 20))]), form, 413, "body"),
        ("no boundary", _multipart([("prompt", b"a")]), "multipart/form-data", 400, "body"),
        ("not multipart", b"just some bytes", form, 400, "body"),
        ("10,000 parts", _multipart([(f"f{i}", b"1") for i in range(10_000)]), form, 400, "body"),
    ]
    for case, body, content_type, status, field in cases:
        response = server.client.post("/api/edit", content=body, headers={"content-type": content_type})
        assert response.status_code == status, (case, response.text[:300])
        assert response.json()["detail"].startswith(field), (case, response.text[:300])
        assert len(response.content) <= 4096
    assert server.client.get("/health").json()["status"] == "ok"


def test_only_json_and_the_edit_route_form_are_accepted(server):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "image/png"):
        response = server.client.post(
            "/api/edit", content=b"prompt=a", headers={"content-type": content_type}
        )
        assert response.status_code == 415, (content_type, response.text)
        assert response.json()["detail"].startswith("content-type"), response.text
    # Multipart is the edit route's only: /api/generate takes JSON.
    response = server.client.post("/api/generate", data={"prompt": "a"}, files={"x": ("x", b"x")})
    assert response.status_code == 415 and "application/json" in response.json()["detail"]


def test_forms_from_another_site_are_refused(server):
    # A browser posts a form anywhere without a CORS preflight, naming the page in Origin.
    response = upload(server, {"seed": "1"}, headers={"origin": "https://elsewhere.example"})
    assert response.status_code == 403 and response.json()["detail"].startswith("origin"), response.text
    response = upload(server, {"seed": "1"}, headers={"origin": "null"})
    assert response.status_code == 403, response.text
    same_site = upload(server, {"seed": "1"}, headers={"origin": server.url})
    assert same_site.status_code == 200, same_site.text


def test_openapi_documents_both_edit_bodies(server):
    schema = server.client.get("/openapi.json").json()
    post = schema["paths"]["/api/edit"]["post"]
    content = post["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    assert content["multipart/form-data"]["schema"]["$ref"].endswith("/EditForm")
    form = schema["components"]["schemas"]["EditForm"]
    assert form["properties"]["image"]["format"] == "binary" and form["required"] == ["prompt", "image"]
    assert form["additionalProperties"] is False
    assert set(form["properties"]) == set(schema["components"]["schemas"]["EditRequest"]["properties"])
    assert {"403", "413", "415", "422"} <= set(post["responses"])
    assert "multipart/form-data" in post["responses"]["415"]["description"]


def test_fuzzed_multipart_edits_never_get_a_5xx(server):
    good_files = [png_bytes(SOURCE), png_bytes(MASK), *(base64.b64decode(text) for text in BAD.values())]
    part = st.tuples(
        st.sampled_from(["prompt", "image", "mask", "seed", "strength", "paste_back", "steps", "x", ""]),
        st.booleans(),  # a file part (with a filename) or a text part
        st.one_of(
            st.sampled_from(good_files),
            st.binary(max_size=64),
            st.sampled_from([b"0", b"1", b"0.5", b"-1", b"true", b"nan", b"1e999", "é".encode()]),
        ),
    )

    statuses: set[int] = set()

    @settings(max_examples=120, deadline=None, database=None, derandomize=True)
    @given(base=st.booleans(), parts=st.lists(part, max_size=5))
    def one_request(base: bool, parts: list[tuple[str, bool, bytes]]) -> None:
        # Half the requests start from a valid edit, so that the fuzz also reaches the model.
        valid = [("prompt", False, b"a red hat"), ("image", True, good_files[0]), ("steps", False, b"1")]
        # (None, value): a text part; (filename, value): a file part.
        form = [
            (name, ("f.bin" if is_file else None, value))
            for name, is_file, value in [*(valid if base else []), *parts]
        ] or [("prompt", (None, b""))]
        response = server.client.post("/api/edit", files=form)
        statuses.add(response.status_code)
        assert response.status_code < 500, response.text[:300]
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/json"
            assert len(response.content) <= 4096

    one_request()
    assert {200, 422} <= statuses  # the fuzz reached both the model and the validator
    assert "Traceback" not in server.log()
    assert server.client.get("/health").json()["status"] == "ok"
