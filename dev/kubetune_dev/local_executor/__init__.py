"""The local executor: a kubelet stand-in, run as its own program (``python -m kubetune_dev.local_executor``)."""

from kubetune_dev.local_executor.executor import LocalExecutor, Targets, write_file_sd
from kubetune_dev.local_executor.process import ExecutorProcess

__all__ = ["ExecutorProcess", "LocalExecutor", "Targets", "write_file_sd"]
