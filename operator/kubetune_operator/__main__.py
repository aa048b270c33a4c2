"""`python -m kubetune_operator`: run the operator (all namespaces, or KUBETUNE_WATCH_NAMESPACE), with
Kopf's liveness endpoint on KUBETUNE_LIVENESS_PORT (what `kopf run --liveness` would start)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from kubetune_operator import handlers  # noqa: F401  # importing registers the handlers
from kubetune_operator.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    namespace = settings.watch_namespace
    asyncio.run(
        kopf.operator(
            clusterwide=not namespace,
            namespaces=[namespace] if namespace else [],
            standalone=True,  # one replica (the chart uses strategy Recreate): no peering objects needed
            # Kopf answers 200 while its handlers' event loop runs; the chart's livenessProbe checks it.
            liveness_endpoint=f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None,
        )
    )


if __name__ == "__main__":
    main()
