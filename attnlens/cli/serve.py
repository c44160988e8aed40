"""``attnlens serve``: a steered OpenAI-compatible server (see :mod:`attnlens.api.server`)."""

from __future__ import annotations

import argparse
from typing import Any

from ..core.errors import CLIError
from ._common import add_dtype_flag, load_model_for, number, positive_int


def add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model behind an OpenAI-compatible API, steered by any registered method")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    add_dtype_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="the port (default: 8000; 0 picks a free one)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="requests generated together (default: 8)")
    p.add_argument("--batch-wait-ms", type=number, default=10.0,
                   help="how long the first waiting request waits for others to join its batch (default: 10)")
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="waiting requests beyond which new ones are refused with 429 (default: 256)")
    p.add_argument("--max-body-bytes", type=positive_int, default=None,
                   help="the largest request body read; a larger one is refused with 413 (default: 4194304, 4 MiB)")
    p.add_argument("--no-continuous", dest="continuous", action="store_false",
                   help="generate batch by batch: requests that arrive while a batch runs wait for the next one "
                        "(default: continuous batching, where they join the running batch)")
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from ..api.server import DEFAULT_MAX_BODY_BYTES, bind, serve, socket_url
    from ..runtime.models import EMBEDDED_NAME

    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be from 0 to 65535, got {args.port}")
    if not 0 <= args.batch_wait_ms <= 10_000:
        raise CLIError(f"--batch-wait-ms must be from 0 to 10000, got {args.batch_wait_ms:g}")
    sock = bind(args.host, args.port)  # a taken port fails before the model loads
    try:
        model = load_model_for(args)
        name = args.model or EMBEDDED_NAME
        print(f"attnlens: serving {name} at {socket_url(sock)} (Ctrl-C stops)", flush=True)
        serve(model, sock, model_name=name, max_batch_size=args.batch_size,
              batch_wait=args.batch_wait_ms / 1000, max_queue=args.max_queue,
              max_body_bytes=args.max_body_bytes or DEFAULT_MAX_BODY_BYTES, continuous=args.continuous)
    finally:
        sock.close()
    return 0
