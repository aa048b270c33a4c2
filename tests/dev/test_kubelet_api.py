"""The local executor's kubelet log endpoint, over real HTTPS: tailLines, limitBytes, a follow that sees
lines as they are written and ends with the process, init containers' logs, and the errors."""

from __future__ import annotations

import doctest
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune_dev.local_executor import kubelet_api
from kubetune_dev.local_executor.kubelet_api import KubeletLogServer


def test_doctests() -> None:
    assert doctest.testmod(kubelet_api).failed == 0


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[KubeletLogServer, Path, threading.Event]]:
    pod = tmp_path / "ns1" / "trainer-0"
    pod.mkdir(parents=True)
    (pod / "container.log").write_bytes(b"one\ntwo\nthree\n")
    (pod / "init-fetch.log").write_bytes(b"fetched\n")
    running = threading.Event()
    server = KubeletLogServer(tmp_path, lambda key: key == "ns1/trainer-0" and running.is_set(), "n1").start()
    yield server, pod, running
    server.stop()


def get(server: KubeletLogServer, path: str) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # as the apiserver without a kubelet CA
    with urllib.request.urlopen(f"https://127.0.0.1:{server.port}{path}", context=context, timeout=10) as resp:
        return bytes(resp.read())


def test_a_containers_log_whole_tailed_and_limited(served) -> None:
    server, _, _ = served
    assert get(server, "/containerLogs/ns1/trainer-0/trainer") == b"one\ntwo\nthree\n"
    assert get(server, "/containerLogs/ns1/trainer-0/trainer?tailLines=2") == b"two\nthree\n"
    assert get(server, "/containerLogs/ns1/trainer-0/trainer?limitBytes=5") == b"one\nt"
    assert get(server, "/containerLogs/ns1/trainer-0/fetch") == b"fetched\n"  # an init container's own


def test_follow_streams_new_lines_until_the_process_ends(served) -> None:
    server, pod, running = served
    running.set()

    def write_then_end() -> None:
        time.sleep(0.5)
        with open(pod / "container.log", "ab") as f:
            f.write(b"four\n")
        time.sleep(0.5)
        running.clear()

    writer = threading.Thread(target=write_then_end)
    writer.start()
    started = time.monotonic()
    assert get(server, "/containerLogs/ns1/trainer-0/trainer?follow=true&tailLines=1") == b"three\nfour\n"
    assert time.monotonic() - started >= 0.9  # it waited for the process, not only for the file's end
    writer.join()


def test_unknown_paths_pods_and_previous_logs_are_errors(served) -> None:
    server, _, _ = served
    for path, code in [("/pods", 404), ("/containerLogs/ns1/gone/trainer", 404),
                       ("/containerLogs/ns1/trainer-0/trainer?previous=true", 400)]:  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as err:
            get(server, path)
        assert err.value.code == code, path
