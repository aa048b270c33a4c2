"""Server settings: command-line flags, each with a ``KUBETUNE_SERVER_<FLAG>`` environment default.

A flag wins over its variable, so a Deployment can set the environment and a human can still
override one value on the command line, e.g. ``KUBETUNE_SERVER_INJECT_LATENCY_MS=300``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_server.capture import CaptureConfig
from kubetune_trainer import uris

ENV_PREFIX = "KUBETUNE_SERVER_"


class SettingsError(ValueError):
    """A flag or variable has a value the server cannot run with."""


@dataclass(frozen=True)
class ServerSettings:
    model: str
    revision: str | None = None
    adapter: str | None = None
    adapter_name: str = "adapter"
    model_name: str | None = None  # defaults to the model directory's name
    host: str = "127.0.0.1"
    port: int = 8000
    version: str = "unknown"
    inject_latency_ms: float = 0.0
    inject_error_rate: float = 0.0
    max_new_tokens: int = 64
    device: str = "auto"
    seed: int = 0
    torch_threads: int = 0  # 0: torch's default
    capture_uri: str | None = None  # None: capture off (feedback is still accepted and counted)
    capture_sample_rate: float = 0.1
    capture_max_file_bytes: int = 8 << 20
    capture_max_file_seconds: float = 300.0
    capture_redact_fields: str = ""  # a JSON list of keys
    capture_redact_patterns: str = ""  # a JSON list of regexes (JSON, since a regex may hold any separator)
    capture_queue: int = 1000

    def capture(self) -> CaptureConfig | None:
        return capture_config(self)

    @property
    def served_model_name(self) -> str:
        return self.model_name or Path(self.model.rstrip("/")).name or "model"


# (flag, type, help). The environment variable is ENV_PREFIX + the flag in upper snake case.
FLAGS: list[tuple[str, type, str]] = [
    ("model", str, "directory of the model and its tokenizer (save_pretrained output), or a hub id (HF cache)"),
    ("revision", str, "branch, tag or commit of a hub-id --model (default: main)"),
    ("adapter", str, "directory of a PEFT adapter (save_pretrained output) to apply to the base model"),
    ("adapter-name", str, "name the adapter is served under in /v1/models and the request's 'model'"),
    ("model-name", str, "name the base model is served under (default: the model directory's name)"),
    ("host", str, "address to listen on (0.0.0.0 inside a pod)"),
    ("port", int, "port to listen on; 0 picks a free one (the log line 'listening on' names it)"),
    ("version", str, "value of the 'version' label on every kubetune_* metric, e.g. stable or canary"),
    ("inject-latency-ms", float, "sleep this long in every completion request (to test a slow canary)"),
    ("inject-error-rate", float, "answer this fraction (0..1) of valid completion requests with HTTP 500"),
    ("max-new-tokens", int, "upper bound on a request's max_tokens (larger requests are clamped)"),
    ("device", str, "auto (cuda if available, else cpu), cpu or cuda"),
    ("seed", int, "torch seed, so sampled (temperature > 0) output is reproducible across restarts"),
    # torch sizes its pool by the host's cores, not the pod's CPU limit; oversubscribed threads are slower.
    ("torch-threads", int, "CPU threads for torch (0: torch's default, one per host core)"),
]
CAPTURE_FLAGS: list[tuple[str, type, str]] = [
    ("capture-uri", str, "record sampled requests and feedback under this folder or s3://bucket/prefix"),
    ("capture-sample-rate", float, "share (0..1) of responses recorded, by a hash of the response id"),
    ("capture-max-file-bytes", int, "a capture file rotates past this size"),
    ("capture-max-file-seconds", float, "a capture file rotates this long after its first record"),
    ("capture-redact-fields", str, 'JSON list of keys masked anywhere in a record, e.g. ["email"]'),
    ("capture-redact-patterns", str, "JSON list of regexes masked in prompts, messages, responses, corrections"),
    ("capture-queue", int, "records waiting for the writer thread; more are dropped (reason queue)"),
]
FLAGS += CAPTURE_FLAGS


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m kubetune_server",
        description="Serve a model (+ LoRA adapter) with an OpenAI-compatible API and Prometheus metrics.",
    )
    defaults = ServerSettings(model="")
    for flag, kind, text in FLAGS:
        dest = flag.replace("-", "_")
        raw = env.get(env_name(flag))
        default = getattr(defaults, dest) if raw is None else raw
        p.add_argument(f"--{flag}", type=kind, default=default, help=f"{text} [env {env_name(flag)}]")
    return p


def parse(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServerSettings:
    """Flags over environment over defaults; contradictions raise SettingsError before anything loads.

    >>> parse(["--model", "/m", "--version", "canary"], env={"KUBETUNE_SERVER_PORT": "9000"}).port
    9000
    """
    env = os.environ if env is None else env
    p = parser(env)
    ns = p.parse_args(argv)
    # argparse applies `type` to string defaults too, so environment values are converted like flags.
    values = {flag.replace("-", "_"): getattr(ns, flag.replace("-", "_")) for flag, _, _ in FLAGS}
    # An empty variable (a Deployment template with no adapter) means "not set".
    values["adapter"] = values["adapter"] or None
    values["model_name"] = values["model_name"] or None
    values["revision"] = values["revision"] or None
    values["capture_uri"] = values["capture_uri"] or None
    settings = ServerSettings(**values)
    check(settings)
    return settings


def check(s: ServerSettings) -> None:
    if not s.model:
        raise SettingsError(f"--model (or {env_name('model')}) is required")
    if not 0.0 <= s.inject_error_rate <= 1.0:
        raise SettingsError(f"--inject-error-rate must be between 0 and 1, got {s.inject_error_rate}")
    if s.inject_latency_ms < 0:
        raise SettingsError(f"--inject-latency-ms must be >= 0, got {s.inject_latency_ms}")
    if s.max_new_tokens < 1:
        raise SettingsError(f"--max-new-tokens must be >= 1, got {s.max_new_tokens}")
    if s.torch_threads < 0:
        raise SettingsError(f"--torch-threads must be >= 0, got {s.torch_threads}")
    if not 0 <= s.port <= 65535:
        raise SettingsError(f"--port must be 0..65535, got {s.port}")
    if s.device not in ("auto", "cpu", "cuda"):
        raise SettingsError(f"--device must be auto, cpu or cuda, got {s.device!r}")
    if s.adapter and s.adapter_name == s.served_model_name:
        raise SettingsError(f"--adapter-name {s.adapter_name!r} must differ from the base model's name")
    if not s.version:
        raise SettingsError("--version must not be empty (it labels the metrics)")
    check_capture(s)


def _json_list(flag: str, raw: str) -> tuple[str, ...]:
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise SettingsError(f"--{flag} must be a JSON list of strings: {e}") from e
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"--{flag} must be a JSON list of strings, got {raw!r}")
    return tuple(value)


def check_capture(s: Any) -> None:
    """The capture flags of the server and of the capture proxy (any object with the capture_* fields)."""
    if not 0.0 <= s.capture_sample_rate <= 1.0:
        raise SettingsError(f"--capture-sample-rate must be between 0 and 1, got {s.capture_sample_rate}")
    if s.capture_max_file_bytes < 1024:
        raise SettingsError(f"--capture-max-file-bytes must be >= 1024, got {s.capture_max_file_bytes}")
    if s.capture_max_file_seconds <= 0:
        raise SettingsError(f"--capture-max-file-seconds must be > 0, got {s.capture_max_file_seconds}")
    if s.capture_queue < 1:
        raise SettingsError(f"--capture-queue must be >= 1, got {s.capture_queue}")
    for p in _json_list("capture-redact-patterns", s.capture_redact_patterns):
        try:
            re.compile(p)
        except re.error as e:
            raise SettingsError(f"--capture-redact-patterns: {p!r} is not a regular expression ({e})") from e
    _json_list("capture-redact-fields", s.capture_redact_fields)


def capture_config(s: Any) -> CaptureConfig | None:
    if not s.capture_uri:
        return None
    uri = s.capture_uri
    if uri.startswith("pvc://"):
        uri = str(uris.local_path(uri))
    return CaptureConfig(
        uri=uri,
        sample_rate=s.capture_sample_rate,
        max_bytes=s.capture_max_file_bytes,
        max_seconds=s.capture_max_file_seconds,
        redact_fields=_json_list("capture-redact-fields", s.capture_redact_fields),
        redact_patterns=_json_list("capture-redact-patterns", s.capture_redact_patterns),
        queue_size=s.capture_queue,
    )


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def is_hub_id(model: str) -> bool:
    """``org/name`` or ``name``, as the hub spells ids; a path starts with / or . or has more parts.

    >>> is_hub_id("Qwen/Qwen2.5-0.5B"), is_hub_id("/models/base"), is_hub_id("./m"), is_hub_id("a/b/c")
    (True, False, False, False)
    """
    return HUB_ID.fullmatch(model) is not None


def check_paths(s: ServerSettings) -> None:
    """The model and adapter directories exist: fail in a line, before listening, not in a traceback later.

    A hub id that is not a local directory is looked up in the HF cache (``HF_HOME``) when loading.
    A path on a claim (under ``KUBETUNE_PVC_ROOT``) stays inside it: no ``..``, no symlink out of it.
    """
    for flag, path in (("--model", s.model), ("--adapter", s.adapter)):
        if path and path.startswith("/"):
            try:
                uris.local_path(path)
            except uris.EscapesClaim as e:
                raise SettingsError(f"{flag} {e}") from e
    if not Path(s.model).is_dir() and not is_hub_id(s.model):
        raise SettingsError(f"--model {s.model}: not a directory (nor a hub id such as org/name)")
    if s.revision and Path(s.model).is_dir():
        raise SettingsError(f"--revision {s.revision}: only for a hub-id --model, not the directory {s.model}")
    if s.adapter and not (Path(s.adapter) / "adapter_config.json").is_file():
        raise SettingsError(f"--adapter {s.adapter}: no adapter_config.json there (not a PEFT adapter directory)")
