"""``difflab serve``: a draw-and-generate web page and its JSON API, a layer above pipelines.

:func:`create_app` builds the FastAPI app over a :class:`ModelCatalog` (shipped names, checkpoint
paths, or pipelines built in Python) under :class:`ServeLimits`; :func:`serve` runs it with
uvicorn. Requests queue behind one worker thread (:mod:`difflab.web.jobs`).
"""

from difflab.web.app import check_port_free, create_app, serve
from difflab.web.catalog import ModelCatalog, ServedModel
from difflab.web.limits import ServeLimits
from difflab.web.schemas import GenerateRequest, RequestRefused

__all__ = [
    "GenerateRequest",
    "ModelCatalog",
    "RequestRefused",
    "ServeLimits",
    "ServedModel",
    "check_port_free",
    "create_app",
    "serve",
]
