"""The ``tdb`` command: a dispatcher over three audiences, importing no torch itself.

    tdb serve ...                                  the server            (services/cli_server.py)
    tdb server-info | models | info | forward | ablate | patch | attribute | generate |
        weights | lens | sae list | sae encode | explanations
                                                   client commands       (tdb_client/cli.py)
    tdb sae train | explain | toy train|eval|corpus
                                                   offline tools         (services/cli_offline.py)

Client commands talk to ``--server`` (env TDB_SERVER, default localhost:50051) and import only the
client package; the server and offline commands import torch when they run. Errors print one
line: a server's status and message (exit 1), or a local error (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from services import cli_offline, cli_server
from tdb_client import cli as client_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tdb", description="Transformer Debugger service")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_server.register(sub)
    sae = sub.add_parser("sae", help="sparse autoencoders: list, encode, train")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True)
    client_cli.register(sub, sae_sub)
    cli_offline.register(sub, sae_sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if client_cli.handles(argv):  # client commands build and import nothing else
        return client_cli.main(argv)
    args = build_parser().parse_args(argv)
    from tdb_core.errors import TdbError

    try:
        return client_cli.run(args)
    except TdbError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
