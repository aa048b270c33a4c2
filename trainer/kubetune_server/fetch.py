"""``python -m kubetune_server.fetch URI DEST [--digest sha256:...]``: a serving pod's init step.

Downloads an ``s3://`` (any fsspec) model or adapter folder to ``DEST`` with the trainer's own
download code (same credentials: ``AWS_*`` from the pod's envFrom), and checks it against the digest
the trainer recorded, so a server never starts on a partial or altered copy. ``DEST`` appears whole
or not at all; a restarted init container that finds a verified copy there is done at once.
Exit status: 0 done, 1 the download failed or the digest differs, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from kubetune_trainer import uris
from kubetune_trainer.export import directory_digest


class FetchError(RuntimeError):
    """The location cannot be downloaded, or what came is not what the trainer wrote."""


def fetch(uri: str, dest: Path, digest: str | None = None) -> Path:
    if not dest.is_dir():
        # The partial copy lives beside DEST (same volume), so the final rename is atomic.
        staging = dest.parent / f".fetch-{dest.name}"
        try:
            fetched = uris.fetch_remote(uri, staging)
        except OSError as e:
            raise FetchError(str(e)) from e
        if not fetched.is_dir():
            raise FetchError(f"{uri}: is one object, not a folder of model or adapter files")
        os.rename(fetched, dest)
        shutil.rmtree(staging, ignore_errors=True)
    if digest:
        got = directory_digest(dest)
        if got != digest:
            shutil.rmtree(dest)  # a retry downloads again instead of trusting this copy
            raise FetchError(f"{uri}: digest {got} differs from the recorded {digest}: refusing to serve it")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubetune_server.fetch", description=__doc__.splitlines()[0])
    p.add_argument("uri", help="s3://bucket/prefix of a model or adapter folder")
    p.add_argument("dest", help="local folder to create (e.g. /models/adapter, on an emptyDir)")
    p.add_argument("--digest", help="sha256:... as in a FineTuneJob's status.artifact; checked after the download")
    args = p.parse_args(argv)
    if uris.scheme(args.uri) in ("file", "pvc"):
        print(f"error: {args.uri}: a local location is read in place, not fetched", file=sys.stderr)
        return 2
    try:
        path = fetch(args.uri, Path(args.dest), args.digest)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"fetched {args.uri} -> {path}" + (f" ({args.digest} verified)" if args.digest else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
