"""The ``builtin`` serving runtime: one base model (+ optional LoRA adapter) behind an OpenAI-style API.

``python -m kubetune_server --model DIR [--adapter DIR]`` serves ``/v1/completions``,
``/v1/chat/completions``, ``/v1/models``, ``/healthz``, ``/readyz`` and ``/metrics`` with the stdlib
HTTP server. It is built for small models and for canary analysis (Prometheus metrics labelled with
``--version``; latency and error injection), not for throughput: generation is serialised.

Every flag can also come from ``KUBETUNE_SERVER_<FLAG>`` (``--inject-latency-ms`` ->
``KUBETUNE_SERVER_INJECT_LATENCY_MS``); ``python -m kubetune_server --help`` lists them. The metrics
and what "absent" means for each are documented in ``metrics``. ``--port 0`` picks a free port and
logs it ("listening on http://HOST:PORT"), which is how the tests start servers without port races.

Modules: ``settings`` (flags and ``KUBETUNE_SERVER_*`` variables), ``protocol`` (pure request
validation and response shapes), ``model`` (loading and generation), ``metrics``, ``app`` (HTTP),
``cli`` (wiring), ``capture`` (sampled request and feedback records to rotating JSONL files on a writer
thread; spec.capture), ``redact`` (what is masked before a record is written) and ``capture_proxy``
(``python -m kubetune_server.capture_proxy``: the same capture and /v1/feedback in front of vLLM).
"""
