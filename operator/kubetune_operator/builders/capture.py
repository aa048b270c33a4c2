"""What spec.capture adds to a serving pod: the server's capture flags, and for vLLM a capture proxy in front.

Room: pure builders (no API calls, no kopf). The builtin server captures itself. vLLM cannot: it has no
hook for a record per response and no /v1/feedback, so when capture is on a small proxy (``python -m
kubetune_server.capture_proxy``, from the server image) takes the pod's ``http`` port, the one the
Services and the scrape annotation name, and forwards to vLLM on the next port. Nothing else changes:
the Services still target ``http``, and the proxy's /metrics is vLLM's plus its own feedback and capture
series, so the analysis' vllm:* queries (selected by pod name) keep their data.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune_api.capture import Capture
from kubetune_operator.builders.security import container_security_context, home_env
from kubetune_operator.builders.trainer_job import resolve_uri
from kubetune_operator.builders.volumes import claim_of
from kubetune_operator.settings import Settings

PROXY = "capture-proxy"


def capture_claim(capture: Capture | None) -> str | None:
    """The claim the servers write captures to (mounted read-write), if the location is one."""
    return claim_of(capture.uri) if capture is not None and capture.uri.startswith("pvc://") else None


def capture_args(capture: Capture, settings: Settings) -> list[str]:
    """The capture flags of kubetune_server and of its capture proxy (kubetune_server.settings.CAPTURE_FLAGS).

    >>> capture_args(Capture(uri="pvc://caps/support", sample_rate=0.5), Settings())[:4]
    ['--capture-uri', '/mnt/pvc/caps/support', '--capture-sample-rate', '0.5']
    """
    args = ["--capture-uri", resolve_uri(capture.uri, settings), "--capture-sample-rate", str(capture.sample_rate)]
    args += ["--capture-max-file-bytes", str(capture.max_file_bytes)]
    args += ["--capture-max-file-seconds", str(capture.max_file_seconds)]
    if capture.redact and capture.redact.fields:
        args += ["--capture-redact-fields", json.dumps(capture.redact.fields)]
    if capture.redact and capture.redact.patterns:
        args += ["--capture-redact-patterns", json.dumps(capture.redact.patterns)]
    return args


def engine_port(port: int) -> int:
    """Where vLLM listens when the proxy has the pod's port.

    >>> engine_port(8000), engine_port(65535)
    (8001, 65534)
    """
    return port + 1 if port < 65535 else port - 1


def proxy_container(
    capture: Capture,
    port: int,
    version: str,
    image: str,
    env_from: list[dict[str, Any]] | None,
    mounts: list[dict[str, Any]],
    settings: Settings,
) -> dict[str, Any]:
    args = ["--upstream", f"http://127.0.0.1:{engine_port(port)}", "--host", "0.0.0.0", "--port", str(port)]
    args += ["--version", version, *capture_args(capture, settings)]
    container: dict[str, Any] = {
        "name": PROXY,
        "image": image,
        "command": ["python", "-m", "kubetune_server.capture_proxy"],
        "args": args,
        # s3:// captures are spooled in /tmp (the pod's emptyDir) until they are uploaded.
        "env": [home_env()],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        # Ready when vLLM answers /health through it: the Services then send traffic the engine can take.
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    }
    if env_from:
        container["envFrom"] = env_from  # the s3:// keys, as the server and its fetch init containers get them
    return container
