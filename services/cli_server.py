"""The server command of ``tdb``: ``tdb serve``, with every flag of :mod:`services.settings`.

    tdb serve [--model NAME=PATH_OR_HUB_ID]... [--sae [MODEL:]ID=PATH[@SITE]]... [--port 50051] ...

Building its parser imports no torch; running it loads the models.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    from services.server import serve
    from services.settings import settings_from_args

    return serve(settings_from_args(args))


def register(sub: Any) -> None:
    """Add ``serve`` to ``tdb``'s subparsers."""
    from services.settings import add_serve_arguments

    p = sub.add_parser("serve", help="run the gRPC server (default: the embedded toy model)")
    add_serve_arguments(p)
    p.set_defaults(func=cmd_serve)
