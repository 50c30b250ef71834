"""The JSON API refuses bad requests with one sentence and a 4xx, queues, and answers 503 when full."""

from __future__ import annotations

import base64
import http.client
import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from difflab.pipelines import load_pipeline
from difflab.web import ModelCatalog, ServeLimits
from tests.web.conftest import GatedEcho, SketchEcho, call, pipeline_of, running_server

LIMITS = ServeLimits(max_steps=50, max_n=4, queue_size=1, max_image_bytes=20_000)


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def stroke() -> str:
    image = Image.new("L", (56, 56))
    image.paste(255, (10, 20, 46, 24))
    return png_url(image)


@pytest.fixture(scope="module")
def api():
    gated = GatedEcho()
    catalog = ModelCatalog.from_pipelines(
        {
            "echo": pipeline_of(SketchEcho()),
            "gated": pipeline_of(gated),
            "mnist_cond": load_pipeline("mnist_cond"),
        }
    )
    with running_server(catalog, LIMITS) as base:
        yield base, gated
        gated.allow(1000)  # nothing waits on a permit when the server stops


def noise_png(side: int) -> str:
    """A PNG that does not compress: about side * side bytes."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)
    return png_url(Image.fromarray(pixels))


def claimed_png(side: int) -> str:
    """A PNG whose header claims side x side pixels and holds none (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


BAD_REQUESTS = [
    # (body, status, words the one sentence must hold)
    (b"{not json", 422, "not valid JSON"),
    (b"[1, 2]", 422, "JSON object"),
    ({"n": 1}, 422, "model: field required"),
    ({"model": "echo", "n": "2"}, 422, "n: input should be a valid integer"),
    ({"model": "echo", "colour": "red"}, 422, "colour: extra inputs are not permitted"),
    ({"model": "nope"}, 422, "unknown model 'nope'; choose one of echo, gated, mnist_cond"),
    ({"model": "echo", "n": 5}, 422, "n = 5 is over this server's limit of 4"),
    ({"model": "echo", "steps": 51}, 422, "steps = 51 is over this server's limit of 50"),
    ({"model": "echo", "steps": 0}, 422, "steps: input should be greater than or equal to 1"),
    ({"model": "echo", "sampler": "plms"}, 422, "unknown sampler 'plms'"),
    ({"model": "echo", "spacing": "log"}, 422, "unknown spacing 'log'"),
    ({"model": "echo", "eta": -1}, 422, "eta: input should be greater than or equal to 0"),
    ({"model": "echo", "eta": 1.0}, 422, "eta = 1 changes nothing with the dpm++2m sampler"),
    ({"model": "mnist_cond", "label": 10}, 422, "label 10 is out of range"),
    ({"model": "mnist_cond", "guidance_scale": 2}, 422, "needs a label"),
    ({"model": "mnist_cond", "hint": "x"}, 422, "does not read a control image"),
    ({"model": "echo", "hint": "data:text/plain;base64,AAAA"}, 422, "data:image/png;base64"),
    ({"model": "echo", "hint": "data:image/png;base64,@@@@"}, 422, "not valid base64"),
    ({"model": "echo", "hint": "data:image/png;base64,AAAA"}, 422, "not a readable image"),
    ({"model": "echo", "hint": png_url(Image.new("L", (28, 28), 255))}, 422, "sketch is blank"),
    (
        {"model": "echo", "hint": noise_png(160)},
        413,
        "larger than this server's limit of 20,000 bytes",
    ),
    ({"model": "echo", "hint": png_url(Image.new("L", (3000, 10)))}, 413, "at most 2048 on a side"),
    ({"model": "echo", "hint": claimed_png(30000)}, 413, "claims more pixels than any image"),
    (b"{" + b" " * 100_000 + b"}", 413, "request is larger than this server's limit of 90,666"),
]


def test_bad_requests_get_one_sentence_and_a_4xx(api):
    """Fails if any bad request is run, crashes the server (500), or answers with a traceback or
    pydantic's raw error list instead of one sentence (e.g. with the 413 check removed, or with
    the validation handler deleted)."""
    base, _ = api
    for body, status, words in BAD_REQUESTS:
        got, answer = call(f"{base}/api/generate", body)
        shown = str(body)[:60]
        assert got == status, f"{shown}: {got} {answer}"
        assert set(answer) == {"error"}, f"{shown}: {answer}"
        sentence = answer["error"]
        assert words in sentence, f"{shown}: {sentence}"
        assert sentence.endswith(".") and "\n" not in sentence and "Traceback" not in sentence
    status, answer = post_chunked(base, [b"{", *[b" " * 10_000] * 10, b"}"])
    assert status == 413 and "larger than this server's limit" in answer["error"]
    assert call(f"{base}/api/jobs/0123")[0] == 404
    assert call(f"{base}/api/models", b"{}", method="PUT")[0] == 405
    # a good request still runs after all that
    status, job = call(f"{base}/api/generate", {"model": "echo", "steps": 2, "hint": stroke()})
    assert status == 202 and job["status"] in ("queued", "running", "done")


def test_a_full_queue_answers_503_at_once_and_the_queue_drains(api):
    """The gated model holds the worker; with queue_size 1 one request waits and the next is
    refused. Fails if the queue is unbounded, if a refused request is run anyway, or if the
    worker stops after a job."""
    base, gated = api
    body = {"model": "gated", "steps": 2, "hint": stroke()}
    first = call(f"{base}/api/generate", body)
    second = call(f"{base}/api/generate", body)
    third = call(f"{base}/api/generate", body)
    assert (first[0], second[0]) == (202, 202), (first, second)
    assert third[0] == 503 and "busy" in third[1]["error"], third
    assert call(f"{base}/api/jobs/{second[1]['id']}")[1]["position"] == 0
    gated.allow(4)
    for job in (first[1], second[1]):
        state = wait_for(base, job["id"], "done")
        assert len(state["images"]) == 1
        status, png = call(f"{base}{state['images'][0]}")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_step_shows_its_x0_and_jobs_can_be_cancelled(api):
    """The page watches the sample form: after each step the job holds that step's predicted x0.
    Fails if previews are only set at the end, or if a cancelled job (running or waiting) runs
    on."""
    base, gated = api
    body = {"model": "gated", "steps": 3, "hint": stroke()}
    job = call(f"{base}/api/generate", body)[1]
    gated.allow(1)
    state = wait_for(base, job["id"], "running", step=1)
    preview = Image.open(io.BytesIO(base64.b64decode(state["preview"].split(",")[1])))
    assert preview.size == (28, 28) and np.asarray(preview).max() > 200  # the stroke, as x0
    assert state["images"] == []
    waiting = call(f"{base}/api/generate", body)[1]
    assert call(f"{base}/api/jobs/{waiting['id']}", method="DELETE")[1]["status"] == "cancelled"
    call(f"{base}/api/jobs/{job['id']}", method="DELETE")
    gated.allow(1)  # the running step ends, then the job stops instead of taking step 3
    assert wait_for(base, job["id"], "cancelled")["step"] == 1
    assert call(f"{base}/api/jobs/{waiting['id']}")[1]["step"] == 0


def test_edges_of_an_uploaded_image_become_a_sketch(api):
    """Fails if the edges are not at the model's size, not white on black, or not where the
    uploaded image has its contour; a bad upload is one sentence."""
    base, _ = api
    photo = Image.new("RGB", (84, 84), (20, 20, 20))
    photo.paste((230, 230, 230), (21, 21, 63, 63))  # a bright square: its contour is the edge
    status, answer = call(f"{base}/api/edges", {"model": "echo", "image": png_url(photo)})
    assert status == 200, answer
    edges = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["hint"].split(",")[1]))))
    assert edges.shape == (28, 28)
    bright = edges > 127
    assert bright[6:22, 6:22].any() and not bright[:4].any() and not bright[12:16, 12:16].any()
    status, answer = call(f"{base}/api/edges", {"model": "echo", "image": "data:image/png;base64,"})
    assert status == 422 and answer["error"] == "image is not a readable image."


def post_chunked(base: str, chunks: list[bytes]) -> tuple[int, dict]:
    """POST a body in chunks, without a Content-Length (the server must count the bytes)."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json"}
    connection.request("POST", "/api/generate", iter(chunks), headers, encode_chunked=True)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def wait_for(base: str, job_id: str, status: str, step: int | None = None) -> dict:
    """The job's state once it has ``status`` (and ``step``); fails after 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = call(f"{base}/api/jobs/{job_id}")[1]
        if state["status"] == status and step in (None, state["step"]):
            return state
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} is {state['status']} at step {state['step']}, not {status}")
