"""Where a URI in the spec lives on this machine.

``pvc://claim/path`` is a volume the operator mounted at ``/mnt/pvc/<claim>`` (``KUBETUNE_PVC_ROOT``
overrides the root so the same spec runs on a laptop). ``s3://`` goes through fsspec. ``hf://org/name``
is a Hugging Face dataset or model id; ``KUBETUNE_HF_ROOT`` may point at a directory of local
copies (``<root>/org/name``), which is how tests stand in for the hub.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def pvc_root() -> Path:
    return Path(os.environ.get("KUBETUNE_PVC_ROOT", "/mnt/pvc"))


def cache_dir() -> Path:
    """``$KUBETUNE_CACHE``, else ``~/.cache/kubetune``; in a pod whose home is read-only, the temp dir."""
    if "KUBETUNE_CACHE" in os.environ:
        return Path(os.environ["KUBETUNE_CACHE"])
    home = Path.home()
    if os.access(home, os.W_OK):
        return home / ".cache" / "kubetune"
    import tempfile

    return Path(tempfile.gettempdir()) / "kubetune"


def scheme(uri: str) -> str:
    """``"s3://b/k"`` -> ``"s3"``; a plain path -> ``"file"``."""
    return uri.split("://", 1)[0] if "://" in uri else "file"


def local_path(uri: str) -> Path:
    """Resolve a local or pvc URI to a path.

    >>> str(local_path("/data/x.jsonl"))
    '/data/x.jsonl'
    >>> str(local_path("pvc://models/llama/v1"))  # with KUBETUNE_PVC_ROOT unset
    '/mnt/pvc/models/llama/v1'
    """
    kind = scheme(uri)
    if kind == "file":
        return Path(uri.removeprefix("file://")).expanduser()
    if kind == "pvc":
        claim_and_path = uri.removeprefix("pvc://").strip("/")
        if not claim_and_path:
            raise ValueError(f"{uri}: pvc URIs look like pvc://claim/path")
        return pvc_root() / claim_and_path
    raise ValueError(f"{uri}: not a local or pvc:// location")


def to_uri(path: Path) -> str:
    """The inverse of `local_path` for volumes: a path under the PVC root becomes ``pvc://claim/...``.

    >>> to_uri(Path("/mnt/pvc/artifacts/run-1/artifact"))  # with KUBETUNE_PVC_ROOT unset
    'pvc://artifacts/run-1/artifact'
    """
    root = pvc_root().resolve()
    resolved = Path(path).resolve()
    if resolved.is_relative_to(root) and resolved != root:
        return "pvc://" + str(resolved.relative_to(root))
    return str(path)


def hf_local_copy(uri: str) -> Path | None:
    """``hf://org/name`` -> ``$KUBETUNE_HF_ROOT/org/name`` when such a directory exists."""
    root = os.environ.get("KUBETUNE_HF_ROOT")
    path = Path(root) / uri.removeprefix("hf://") if root else None
    return path if path is not None and path.is_dir() else None


def fetch_remote(uri: str, dest: Path) -> Path:
    """Copy an ``s3://`` (or any fsspec) file or folder to ``dest`` and return the local path.

    A copy that completed is reused (a retried pod starts faster); one cut short by a crash is not,
    because the copy lands under a temporary name and is renamed into place only when whole. Errors
    (missing key, no access, no endpoint) come out as ``OSError`` naming the URI.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    # One folder per URI: s3://a/data.jsonl and s3://b/data.jsonl must not share a cached copy.
    dest = dest / hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = dest / Path(path).name
    if target.exists():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    partial = dest / f".partial-{target.name}-{os.getpid()}"
    try:
        if not fs.exists(path):
            raise FileNotFoundError(f"{uri}: no such object or prefix")
        if fs.isdir(path):
            partial.mkdir()
            for remote in fs.find(path):  # every object under the prefix, keeping relative paths
                local = partial / Path(remote).relative_to(path.rstrip("/"))
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local))
        else:
            fs.get_file(path, str(partial))
        os.rename(partial, target)
    except OSError as e:
        raise OSError(f"{uri}: cannot fetch ({e})") from e
    except Exception as e:  # botocore/aiohttp errors that s3fs does not translate (e.g. no endpoint)
        raise OSError(f"{uri}: cannot fetch ({type(e).__name__}: {e})") from e
    finally:
        if partial.exists():
            import shutil

            shutil.rmtree(partial) if partial.is_dir() else partial.unlink()
    return target
