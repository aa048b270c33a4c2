"""Where a URI in the spec lives on this machine.

``pvc://claim/path`` is a volume the operator mounted at ``/mnt/pvc/<claim>`` (``KUBETUNE_PVC_ROOT``
overrides the root so the same spec runs on a laptop). ``s3://`` goes through fsspec. ``hf://org/name``
is a Hugging Face dataset or model id; ``KUBETUNE_HF_ROOT`` may point at a directory of local
copies (``<root>/org/name``), which is how tests stand in for the hub.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from kubetune_trainer.transfers import TransferLog


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


class EscapesClaim(ValueError):
    """A pvc:// URI that names a place outside its claim: a spec error, final like a bad config."""


#: A claim name as Kubernetes allows it (a DNS label): no ``.``, ``..`` or empty claim to climb with.
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def local_path(uri: str) -> Path:
    """Resolve a local or pvc URI to a path; a pvc:// path never leaves its claim's mount.

    >>> str(local_path("/data/x.jsonl"))
    '/data/x.jsonl'
    >>> str(local_path("pvc://models/llama/v1"))  # with KUBETUNE_PVC_ROOT unset
    '/mnt/pvc/models/llama/v1'
    >>> local_path("pvc://data/../../etc/passwd")
    Traceback (most recent call last):
    ...
    kubetune_trainer.uris.EscapesClaim: pvc://data/../../etc/passwd: a pvc:// path may not contain '..'
    """
    kind = scheme(uri)
    if kind == "file":
        path = Path(uri.removeprefix("file://")).expanduser()
        root = pvc_root()
        if not path.is_relative_to(root) or path == root:
            return path
        # A path under the claims' root (KUBETUNE_OUTPUT_DIR is one) is held to the same rules.
        uri = "pvc://" + str(path.relative_to(root))
    if kind in ("file", "pvc"):
        claim, _, inner = uri.removeprefix("pvc://").partition("/")
        if not _CLAIM.match(claim):
            raise EscapesClaim(f"{uri}: pvc URIs look like pvc://claim/path, with a claim name such as 'data'")
        if inner.startswith("/"):  # Path(mount) / "/etc/passwd" would be /etc/passwd
            raise EscapesClaim(f"{uri}: the path after pvc://{claim}/ must be relative to the claim")
        if ".." in inner.split("/"):
            raise EscapesClaim(f"{uri}: a pvc:// path may not contain '..'")
        mount = pvc_root() / claim
        return _inside(uri, mount, mount / inner.rstrip("/"))
    raise ValueError(f"{uri}: not a local or pvc:// location")


def _inside(uri: str, mount: Path, path: Path) -> Path:
    """`path` with its symlinks resolved, refused when it, or a symlink in the folder it names, leads
    out of `mount`. The data on a claim is written by users: a link to /etc or to another claim's mount
    would otherwise read (or, for an output, write) whatever the pod can reach.
    """
    root = mount.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise EscapesClaim(f"{uri}: resolves to {resolved}, outside its claim (a symlink leads out of it)")
    if resolved.is_dir():
        for folder, dirs, files in os.walk(resolved):
            for name in dirs + files:
                entry = Path(folder) / name
                if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                    raise EscapesClaim(f"{uri}: {entry} is a symlink out of its claim (to {entry.resolve()})")
    # The resolved path: later opens no longer follow the links that were just checked.
    return resolved


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
            found = fs.find(path, detail=True)  # every object under the prefix, keeping relative paths
            progress = TransferLog("fetching", uri, sum(int(o.get("size") or 0) for o in found.values()))
            for remote in found:
                local = partial / Path(remote).relative_to(path.rstrip("/"))
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(local), callback=progress.callback())
        else:
            progress = TransferLog("fetching", uri, int(fs.size(path) or 0))
            fs.get_file(path, str(partial), callback=progress.callback())
        progress.finish()
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
