"""Generate the Python stubs from protos/ — the only way stubs are made. Never edit them by hand.

    python scripts/gen_protos.py          # write clients/python/tdb/v1/*_pb2*.py(i)
    python scripts/gen_protos.py --check  # exit 1 if the committed stubs are stale

The stubs live in the tdb-client distribution (package ``tdb.v1``), which the server also uses.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "clients" / "python"
PACKAGE = Path("tdb") / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every .proto; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    files = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--pyi_out={out_root}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p for p in (out_root / PACKAGE).iterdir() if "_pb2" in p.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with committed stubs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_root = Path(tmp)
        (tmp_root / PACKAGE).mkdir(parents=True)
        fresh = generate(tmp_root)
        target = OUT / PACKAGE
        committed = (
            sorted(p for p in target.iterdir() if "_pb2" in p.name) if target.exists() else []
        )
        if args.check:
            names = {p.name for p in fresh} == {p.name for p in committed}
            same = names and all(filecmp.cmp(p, target / p.name, shallow=False) for p in fresh)
            if not same:
                print("stubs are stale: run `python scripts/gen_protos.py`", file=sys.stderr)
                return 1
            return 0
        target.mkdir(parents=True, exist_ok=True)
        for p in committed:
            p.unlink()
        for p in fresh:
            shutil.copy2(p, target / p.name)
        for init in (OUT / "tdb" / "__init__.py", target / "__init__.py"):
            init.touch()
        print(f"wrote {len(fresh)} files to {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
