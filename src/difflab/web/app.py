"""The web app: one static page and a JSON API over a :class:`~difflab.web.catalog.ModelCatalog`.

Routes (every error is ``{"error": "one sentence"}`` with a 4xx or 5xx status, never a traceback):

* ``GET /``: the page (``static/index.html``, its script and style; no CDN, works offline).
* ``GET /api/models``: the models, the samplers and the server's limits.
* ``POST /api/generate``: queue a :class:`~difflab.web.schemas.GenerateRequest`; 202 and the job.
* ``POST /api/edges``: the Canny edges of an uploaded image, as a sketch to edit and send.
* ``GET /api/jobs/{id}``: its status, step, latest x0 preview (polled by the page).
* ``GET /api/jobs/{id}/images/{k}.png``, ``GET /api/jobs/{id}/hint.png``: results to download.
* ``DELETE /api/jobs/{id}``: cancel.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from difflab import __version__
from difflab.diffusion import SPACING_NAMES
from difflab.errors import DifflabError
from difflab.samplers import DEFAULT_SAMPLER, SAMPLERS
from difflab.web.catalog import ModelCatalog
from difflab.web.images import decode_data_url, png_data_url
from difflab.web.jobs import Job, JobQueue
from difflab.web.limits import ServeLimits
from difflab.web.schemas import EdgesRequest, GenerateRequest, RequestRefused, validation_sentence

STATIC = Path(__file__).resolve().parent / "static"
LOG = logging.getLogger("difflab.web")


def error_response(status: int, sentence: str) -> JSONResponse:
    return JSONResponse({"error": sentence}, status_code=status)


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before it is parsed
    (checked on the declared Content-Length and again on the bytes that arrive)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # FastAPI passes an HTTPException through unchanged
                raise HTTPException(413, self._sentence())
            return message

        await self.app(scope, counted, send)

    def _sentence(self) -> str:
        return f"the request is larger than this server's limit of {self.max_bytes:,} bytes."

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, self._sentence())(scope, receive, send)


def serve(
    catalog: ModelCatalog,
    limits: ServeLimits | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Serve the app with uvicorn until interrupted; a port in use is one DifflabError."""
    import uvicorn

    check_port_free(host, port)
    app = create_app(catalog, limits)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)  # no poll lines


def check_port_free(host: str, port: int) -> None:
    """A DifflabError when ``host:port`` cannot be bound (in use, or not an address here)."""
    if not 0 <= port <= 65535:
        raise DifflabError(f"--port must lie in 0..65535, got {port}.")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as error:
            raise DifflabError(
                f"cannot listen on {host}:{port} ({error.strerror}); pick another --port or --host."
            ) from None


def create_app(catalog: ModelCatalog, limits: ServeLimits | None = None) -> FastAPI:
    """The ASGI app serving ``catalog`` under ``limits`` (run it with uvicorn, or :func:`serve`).

    The worker thread starts with the app's lifespan and is stopped (its jobs cancelled) at
    shutdown.
    """
    limits = limits or ServeLimits()
    queue: JobQueue | None = None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal queue
        queue = JobQueue(limits)
        try:
            yield
        finally:
            queue.close()

    def jobs() -> JobQueue:
        if queue is None:
            raise RequestRefused(503, "the server is starting or stopping; try again in a moment.")
        return queue

    app = FastAPI(
        title="difflab",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # the Swagger page loads its script from a CDN
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/models")
    def models() -> dict[str, Any]:
        return {
            "models": catalog.summaries(),
            "samplers": [
                {"name": s.name, "summary": s.summary, "spacing": s.spacing, "uses_eta": s.uses_eta}
                for s in SAMPLERS.values()
            ],
            "default_sampler": DEFAULT_SAMPLER,
            "spacings": list(SPACING_NAMES),
            "limits": {
                "max_n": limits.max_n,
                "max_steps": limits.max_steps,
                "queue_size": limits.queue_size,
                "max_image_bytes": limits.max_image_bytes,
            },
        }

    @app.post("/api/generate", status_code=202)
    def generate(request: GenerateRequest) -> dict[str, Any]:
        run = catalog.get(request.model).prepare(request, limits)
        settings = request.model_dump(exclude={"hint"})
        settings["hint"] = request.hint is not None
        job = Job(request.model, run, settings)
        position = jobs().submit(job)
        return job.state(position)

    @app.post("/api/edges")
    def edges(request: EdgesRequest) -> dict[str, str]:
        model = catalog.get(request.model)
        image = decode_data_url(request.image, limits, "image")
        return {"hint": png_data_url(model.edges(image))}

    @app.get("/api/jobs/{job_id}")
    def job_state(job_id: str) -> dict[str, Any]:
        job, position = jobs().get(job_id)
        return job.state(position)

    @app.delete("/api/jobs/{job_id}")
    def cancel(job_id: str) -> dict[str, Any]:
        return jobs().cancel(job_id).state(None)

    @app.get("/api/jobs/{job_id}/images/{index}.png")
    def image(job_id: str, index: int) -> Response:
        job, _ = jobs().get(job_id)
        if not 0 <= index < len(job.images):
            raise RequestRefused(
                404, f"job {job_id} has no image {index} (it has {len(job.images)})."
            )
        return _png(job.images[index], f"difflab-{job_id}-{index}.png")

    @app.get("/api/jobs/{job_id}/hint.png")
    def hint(job_id: str) -> Response:
        job, _ = jobs().get(job_id)
        if job.hint_png is None:
            raise RequestRefused(404, f"job {job_id} was run without a sketch.")
        return _png(job.hint_png, f"difflab-{job_id}-hint.png")

    return app


def _png(data: bytes, filename: str) -> Response:
    headers = {"Content-Disposition": f'inline; filename="{filename}"'}
    return Response(data, media_type="image/png", headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestRefused)
    async def refused(_: Request, error: RequestRefused) -> JSONResponse:
        return error_response(error.status, error.sentence)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, validation_sentence(error.errors()))

    @app.exception_handler(DifflabError)
    async def difflab_error(_: Request, error: DifflabError) -> JSONResponse:
        return error_response(422, str(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return error_response(404, f"nothing at {request.url.path}; the API lives under /api.")
        if error.status_code == 405:
            return error_response(405, f"{request.method} is not allowed on {request.url.path}.")
        return error_response(error.status_code, str(error.detail).rstrip(".") + ".")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        LOG.exception("unexpected error")
        return error_response(
            500, f"the server failed ({type(error).__name__}); see its log for the details."
        )
