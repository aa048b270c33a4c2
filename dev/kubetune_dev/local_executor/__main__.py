"""`python -m kubetune_dev.local_executor --node NAME ...`: play the kubelet for one Node until SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from kubernetes import config

from kubetune_dev.local_executor.executor import LocalExecutor, write_file_sd


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kubetune_dev.local_executor", description=__doc__)
    parser.add_argument("--node", required=True, help="the Node this executor registers and runs the pods of")
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        default=os.environ.get("KUBECONFIG"),
        help="cluster credentials, also handed to the pods' processes (default: $KUBECONFIG)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("/tmp/kubetune/pods"),
        help="where each pod gets its folder (materialised volumes, logs, scratch)",
    )
    parser.add_argument(
        "--pvc-root",
        type=Path,
        default=Path("/tmp/kubetune/pvc"),
        help="the local folder that stands for persistentVolumeClaim mounts (one subfolder per claim)",
    )
    parser.add_argument(
        "--targets-file", type=Path, help="a Prometheus file_sd JSON file kept listing the Ready serving pods"
    )
    args = parser.parse_args(argv)
    if args.kubeconfig is None:
        parser.error("--kubeconfig or $KUBECONFIG is needed")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    api = config.new_client_from_config(str(args.kubeconfig))
    executor = LocalExecutor(api, args.workdir, args.pvc_root, args.kubeconfig, args.node, args.targets_file)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: executor.stop.set())
    executor.register_node()
    if args.targets_file is not None:
        write_file_sd(args.targets_file, [])  # its appearance tells a launcher that the Node is registered
    executor.serve()


if __name__ == "__main__":
    main()
