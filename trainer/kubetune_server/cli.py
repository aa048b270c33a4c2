"""``python -m kubetune_server``: parse settings, listen at once, load the model in the background.

Listening before the model is loaded lets Kubernetes tell "alive" (/healthz) from "ready"
(/readyz). A model that fails to load stops the process with status 1, so the pod restarts and
shows the error instead of staying unready forever. SIGTERM shuts down cleanly (status 0).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from kubetune_server import model
from kubetune_server.app import ErrorInjector, KubetuneHTTPServer, ServerState
from kubetune_server.capture import Recorder
from kubetune_server.metrics import ServerMetrics
from kubetune_server.settings import SettingsError, check_paths, parse

log = logging.getLogger("kubetune_server")


def load_into(state: ServerState, server: KubetuneHTTPServer) -> None:
    try:
        loaded = model.load(state.settings)
    except Exception as e:
        log.exception("cannot load the model")
        state.load_error = str(e)
        server.shutdown()
        return
    if loaded.device.startswith("cuda"):
        state.metrics.add_gpu_memory(lambda: model.gpu_memory()[0], lambda: model.gpu_memory()[1])
    # Everything made while loading (imports, the model's Python objects) leaves the collector's
    # generations: a full collection during a request then walks only what requests made. With torch
    # and transformers loaded one walked ~430,000 objects in 0.15 s here (0.0 s frozen): a pause a P99 shows.
    gc.collect()
    gc.freeze()
    state.model = loaded
    log.info("ready: serving %s", ", ".join(loaded.names))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = parse(argv)
        check_paths(settings)
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    metrics = ServerMetrics(settings.version)
    state = ServerState(settings, metrics, errors=ErrorInjector(settings.inject_error_rate))
    state.recorder = Recorder(settings.version, metrics.capture, settings.capture())
    try:
        server = KubetuneHTTPServer(state)
    except OSError as e:
        print(f"error: cannot listen on {settings.host}:{settings.port}: {e}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    log.info("listening on http://%s:%d (version %s)", host, port, settings.version)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        # shutdown() waits for serve_forever to return, so it cannot run on the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=load_into, args=(state, server), name="load-model", daemon=True).start()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        state.recorder.close()  # publishes the open capture files (renames .part, uploads to s3://)
    return 1 if state.load_error else 0
