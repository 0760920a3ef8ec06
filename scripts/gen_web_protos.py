"""Generate the web app's TypeScript stubs from protos/ — the only way they are made. Never edit them.

    python scripts/gen_web_protos.py          # write clients/web/src/gen/tdb/v1/*_pb.ts
    python scripts/gen_web_protos.py --check  # exit 1 if the committed stubs are stale

protoc is grpcio-tools' (from the project's venv); the plugin is protoc-gen-es from
clients/web/node_modules (`npm ci` in clients/web first), so nothing is downloaded. The stubs are
message and service descriptors for @bufbuild/protobuf v2, which @connectrpc/connect-web calls
over gRPC-Web.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
WEB = ROOT / "clients" / "web"
OUT = WEB / "src" / "gen"
PACKAGE = Path("tdb") / "v1"
PLUGIN = (
    WEB / "node_modules" / ".bin" / ("protoc-gen-es.cmd" if os.name == "nt" else "protoc-gen-es")
)


def generate(out_root: Path) -> list[Path]:
    """Run protoc with protoc-gen-es over every .proto; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    if not PLUGIN.exists():
        raise SystemExit(f"{PLUGIN.relative_to(ROOT)} is missing: run `npm ci` in clients/web")
    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--plugin=protoc-gen-es={PLUGIN}",
        f"--es_out={out_root}",
        "--es_opt=target=ts,import_extension=none",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted((out_root / PACKAGE).glob("*_pb.ts"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with committed stubs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        fresh = generate(tmp_root)
        target = OUT / PACKAGE
        committed = sorted(target.glob("*_pb.ts")) if target.exists() else []
        if args.check:
            names = {p.name for p in fresh} == {p.name for p in committed}
            same = names and all(filecmp.cmp(p, target / p.name, shallow=False) for p in fresh)
            if not same:
                print(
                    "web stubs are stale: run `python scripts/gen_web_protos.py`", file=sys.stderr
                )
                return 1
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for p in committed:
            p.unlink()
        for p in fresh:
            shutil.copy2(p, target / p.name)
        print(f"wrote {len(fresh)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
