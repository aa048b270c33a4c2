"""Development programs and launchers: the local control plane, the local executor (a kubelet
stand-in), Prometheus and a load generator. The demo and the tests import them; the operator image
does not carry them (the Dockerfile copies `operator/` and `trainer/` only)."""
