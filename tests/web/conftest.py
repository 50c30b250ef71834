"""A real server on 127.0.0.1 for the web tests, and test doubles of control models.

The doubles are tiny networks that follow the backbone contract exactly as a ControlNet does
(``conditioning_fields`` holds ``"control"``), so the app's whole path (canvas, request, hint
decoding and resizing, the queue, the sampler, the images) runs for real in milliseconds.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import uvicorn

from difflab.diffusion import Conditioning, NoiseSchedule
from difflab.pipelines import DiffusionPipeline
from difflab.web import ModelCatalog, ServeLimits, create_app

SIZE = 28
CHROMIUM = Path("/usr/bin/chromium")


class SketchEcho(torch.nn.Module):
    """Predicts x0 = the control hint, so a deterministic DDIM run returns the hint itself: the
    image shows exactly what reached the model."""

    prediction = "x0"
    conditioning_fields = ("control",)

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(in_channels=1, image_size=SIZE, num_classes=0)
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        if cond.control is None:
            return torch.zeros_like(x_t)
        return self.gain * cond.control.to(x_t)  # (B, 1, H, W)


class GatedEcho(SketchEcho):
    """A :class:`SketchEcho` whose every forward (one per sampler step) waits for a permit: the
    test decides when the worker moves on (a busy worker, step-by-step previews, cancelling),
    with no timing guesswork. ``allow(k)`` lets k more steps run."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = threading.Semaphore(0)

    def allow(self, steps: int) -> None:
        self.permits.release(steps)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        assert self.permits.acquire(timeout=30), "a gated test model waited 30 s for a permit"
        return super().forward(x_t, t, cond)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's package) driven by playwright, one per test module."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser test needs Debian's chromium at {CHROMIUM}; run `make install` as root "
            "or `apt-get install -y chromium`."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def pipeline_of(net: torch.nn.Module) -> DiffusionPipeline:
    return DiffusionPipeline.from_network(net, NoiseSchedule.from_name("linear"))


@contextmanager
def running_server(catalog: ModelCatalog, limits: ServeLimits | None = None) -> Iterator[str]:
    """The app served by uvicorn in a thread on a free port; yields its base URL."""
    config = uvicorn.Config(
        create_app(catalog, limits), host="127.0.0.1", port=0, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(300):
        if server.started:
            break
        thread.join(0.05)
    assert server.started, "the test server did not start within 15 s"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def call(url: str, body: bytes | dict[str, Any] | None = None, method: str | None = None):
    """``(status, decoded JSON or raw bytes)`` of one request; error statuses are returned."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw, kind = (
                response.status,
                response.read(),
                response.headers.get_content_type(),
            )
    except urllib.error.HTTPError as error:
        status, raw, kind = error.code, error.read(), error.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw
