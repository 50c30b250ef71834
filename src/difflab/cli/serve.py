"""``difflab serve``: the draw-and-generate web app on 127.0.0.1 (see :mod:`difflab.web`)."""

from __future__ import annotations

import argparse

from difflab.cli.common import add_device_argument
from difflab.io.device import select_device
from difflab.web import ModelCatalog, ServeLimits, check_port_free, serve

DEFAULTS = ServeLimits()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="a web page to sketch, set and watch generations (and its JSON API)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1: this machine only)",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        default=None,
        metavar="NAME_OR_PATH",
        help="a shipped model name or a checkpoint; repeat for several (default: every shipped "
        "diffusion model)",
    )
    parser.add_argument("--max-steps", type=int, default=DEFAULTS.max_steps)
    parser.add_argument("--max-n", type=int, default=DEFAULTS.max_n, help="most images a request")
    parser.add_argument(
        "--queue",
        type=int,
        default=DEFAULTS.queue_size,
        help="requests that may wait behind the running one; one more is answered 503",
    )
    parser.add_argument(
        "--max-image-bytes",
        type=int,
        default=DEFAULTS.max_image_bytes,
        help="largest uploaded sketch or image, in bytes",
    )
    add_device_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    limits = ServeLimits(
        max_steps=args.max_steps,
        max_n=args.max_n,
        queue_size=args.queue,
        max_image_bytes=args.max_image_bytes,
    )
    check_port_free(args.host, args.port)  # before minutes of loading, not after
    catalog = ModelCatalog.load(args.models, select_device(args.device))
    print(f"difflab serve: {', '.join(catalog.names())} on http://{args.host}:{args.port}/")
    serve(catalog, limits, args.host, args.port)
    return 0
