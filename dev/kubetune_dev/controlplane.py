"""A real local Kubernetes control plane on loopback, in the way controller-runtime's envtest does it.

etcd + kube-apiserver (TLS, RBAC, service-account keys, admin client cert) + kube-controller-manager
(Job -> Pod, garbage collection) + kube-scheduler + kwok (fake GPU nodes and pod lifecycle). The
binaries come from $KUBEBUILDER_ASSETS when set, else from hack/build-control-plane.sh (cached).

Also a command for the demo and for poking around by hand:
    python -m kubetune_dev.controlplane   # starts, prints KUBECONFIG, runs until Ctrl-C
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kubetune_dev.processes import free_port

REPO = Path(__file__).resolve().parents[2]
KWOK_STAGES = Path(__file__).with_name("kwok") / "stages.yaml"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")


class ControlPlaneError(RuntimeError):
    pass


def asset_dir() -> Path:
    """Binaries dir: $KUBEBUILDER_ASSETS if it has them all, else build or reuse the cached build."""
    env = os.environ.get("KUBEBUILDER_ASSETS")
    if env and all((Path(env) / b).exists() for b in BINARIES):
        return Path(env)
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "build-control-plane.sh")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise ControlPlaneError(f"building the control plane failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters) and service-account keys."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=kubetune-test-ca", cwd=d)  # fmt: skip
    (d / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n"
    )
    for name, subj, ext in (
        ("apiserver", "/CN=kube-apiserver", "san.cnf"),
        ("admin", "/O=system:masters/CN=kubetune-admin", None),
    ):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subj, cwd=d)  # fmt: skip
        sign = ["x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2"]  # fmt: skip
        if ext:
            sign += ["-extfile", ext]
        _openssl(*sign, cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


@dataclass
class ControlPlane:
    workdir: Path
    assets: Path
    kubeconfig: Path = field(init=False)
    audit_log: Path = field(init=False)
    apiserver_url: str = field(init=False, default="")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.audit_log = self.workdir / "audit.log"

    def _audit_policy(self) -> Path:
        """Metadata of writes only (reads and watches would swamp the file), once each when done."""
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [
                {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
                {"level": "None"},
            ],
        }
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        return path

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 120) -> ControlPlane:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        make_pki(pki)
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        # etcd's data in RAM when we can: the suite is fsync-bound otherwise.
        shm = Path("/dev/shm")
        etcd_data = Path(tempfile.mkdtemp(prefix="kubetune-etcd-", dir=shm if shm.is_dir() else None))
        self._etcd_data = etcd_data
        self._spawn(
            "etcd",
            f"--data-dir={etcd_data}",
            "--name=kubetune",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=kubetune=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        )
        self._wait_http(f"http://127.0.0.1:{etcd_port}/health", timeout)
        self.apiserver_url = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--secure-port={api_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--authorization-mode=Node,RBAC",
            # New nodes get a not-ready taint that only the node lifecycle controller lifts; fake
            # nodes have no kubelet heartbeats for it to judge, so neither runs here.
            "--disable-admission-plugins=TaintNodesByCondition",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # Every write, who made it and in which namespace: what the apiserver's request counter
            # (no namespace label) cannot attribute; see kubetune_dev.audit.
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxbackup=0",
            "--v=1",
        )
        self._write_kubeconfig(pki)
        self._wait_http(f"{self.apiserver_url}/readyz", timeout, pki)
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
        self._spawn(
            "kube-controller-manager",
            *common,
            f"--secure-port={free_port()}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=false",
            # Fake nodes have no kubelet heartbeats to judge: keep the node lifecycle controller out.
            "--controllers=*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
            "--concurrent-job-syncs=5",
        )
        self._spawn("kube-scheduler", *common, f"--secure-port={free_port()}")
        self._spawn(
            "kwok",
            f"--kubeconfig={self.kubeconfig}",
            f"--config={KWOK_STAGES}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{free_port()}",
            "--node-ip=10.0.1.1",
            "--cidr=10.0.2.0/24",
        )
        return self

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(getattr(self, "_etcd_data", self.workdir / "none"), ignore_errors=True)

    def check_alive(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise ControlPlaneError(f"control-plane processes exited: {dead}\n{self.logs_tail()}")

    def logs_tail(self, lines: int = 30) -> str:
        out = []
        for name in self.procs:
            text = (self.workdir / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"--- {name} ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    # -- helpers -------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.assets / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def install_crds(self, crd_dir: Path = REPO / "crds") -> None:
        self.kubectl("apply", "--server-side", "-f", str(crd_dir))
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")

    def install_gateway_api_crds(self) -> None:
        """Gateway API CRDs (fetched by hack/build-control-plane.sh) so HTTPRoutes can be applied."""
        self.kubectl("apply", "--server-side", "-f", str(self.vendored_crds("gateway-api")))

    def vendored_crds(self, project: str) -> Path:
        """The folder of another project's CRDs that hack/build-control-plane.sh copied from its Go module:
        gateway-api, jobset or kubeflow-trainer."""
        crds = self.assets / f"{project}-crds"
        return crds if crds.is_dir() else asset_dir() / f"{project}-crds"

    def add_gpu_node(self, name: str = "gpu-node-0", gpus: int = 8) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": name, "type": "kwok", "nvidia.com/gpu.present": "true"},
            },
            "spec": {},
            "status": {
                "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": str(gpus)},
            },
        }
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(node))

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - owned by the process
        self.procs[name] = subprocess.Popen(
            [str(self.assets / name), *args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def _write_kubeconfig(self, pki: Path) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "local",
                    "cluster": {"server": self.apiserver_url, "certificate-authority": str(pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {"client-certificate": str(pki / "admin.crt"), "client-key": str(pki / "admin.key")},
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
            "current-context": "local",
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))

    def _wait_http(self, url: str, timeout: float, pki: Path | None = None) -> None:
        ctx = None
        if pki is not None:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except Exception as err:
                last = str(err)
            time.sleep(0.5)
        raise ControlPlaneError(f"{url} not ready after {timeout}s ({last})\n{self.logs_tail()}")


@contextlib.contextmanager
def running_control_plane(workdir: Path, fake_gpu_node: bool = True):  # type: ignore[no-untyped-def]
    cp = ControlPlane(workdir=workdir, assets=asset_dir())
    try:
        cp.start()
        cp.install_crds()
        cp.install_gateway_api_crds()
        if fake_gpu_node:
            cp.add_gpu_node()
        yield cp
    finally:
        cp.stop()


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="kubetune-cp-"))
    with running_control_plane(workdir) as cp:
        print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
        print(f"kubectl: {cp.assets / 'kubectl'}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                cp.check_alive()
                time.sleep(2)


if __name__ == "__main__":
    main()
