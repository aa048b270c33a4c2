"""`python -m kubetune_operator`: run the operator (all namespaces, or KUBETUNE_WATCH_NAMESPACE)."""

from __future__ import annotations

import asyncio
import logging

import kopf

from kubetune_operator import handlers


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespace = handlers.SETTINGS.watch_namespace
    asyncio.run(
        kopf.operator(
            clusterwide=not namespace,
            namespaces=[namespace] if namespace else [],
            standalone=True,  # one replica (the chart uses strategy Recreate): no peering objects needed
        )
    )


if __name__ == "__main__":
    main()
