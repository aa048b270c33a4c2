"""`kubectl kubetune`: argument parsing and the verbs, each a read, a pure render or patch, and a write.

Room: the kubectl plugin (console script kubectl-kubetune, so kubectl finds it on PATH). Rendering
lives in render_*.py and the patches in actions.py, both pure; the apiserver is reached only
through client.Kube. Errors leave as one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import yaml
from rich.console import Console, RenderableType
from rich.live import Live

from kubetune_cli import actions
from kubetune_cli.client import CliError, Kube, Target
from kubetune_cli.render_ftj import TERMINAL, ftj_line, ftj_view, run_history, runs_table
from kubetune_cli.render_mdep import mdep_line, mdep_view

KIND_ALIASES = {
    **dict.fromkeys(("ftj", "finetunejob", "finetunejobs"), "ftj"),
    **dict.fromkeys(("mdep", "modeldeployment", "modeldeployments"), "mdep"),
}


def _kind(value: str) -> str:
    if value.lower() not in KIND_ALIASES:
        raise argparse.ArgumentTypeError(f"unknown kind {value!r}: use ftj (finetunejob) or mdep (modeldeployment)")
    return KIND_ALIASES[value.lower()]


def parser() -> argparse.ArgumentParser:
    # kubectl hands a plugin every argument as given, so the kubeconfig flags may come before or after the verb.
    def common(p: argparse.ArgumentParser, default: Any) -> None:
        p.add_argument("--kubeconfig", default=default, help="kubeconfig file (default: KUBECONFIG, ~/.kube/config)")
        p.add_argument("--context", default=default, help="kubeconfig context (default: the current one)")
        p.add_argument("-n", "--namespace", default=default, help="namespace (default: the context's)")

    top = argparse.ArgumentParser(prog="kubectl kubetune", description="FineTuneJobs and ModelDeployments.")
    common(top, None)
    verbs = top.add_subparsers(dest="verb", required=True)

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, help=help)
        common(p, argparse.SUPPRESS)
        return p

    def output(p: argparse.ArgumentParser) -> None:
        p.add_argument("-o", "--output", choices=("json", "yaml"), help="the object(s) for scripts, not the view")

    get = verb("get", "show a FineTuneJob (ftj) or ModelDeployment (mdep)")
    get.add_argument("kind", type=_kind)
    get.add_argument("name")
    get.add_argument("-w", "--watch", action="store_true", help="re-render on every change (ftj: until the run ends)")
    output(get)
    runs = verb("runs", "a FineTuneJob's runs and their metrics")
    runs.add_argument("kind", type=_kind, choices=["ftj"])
    runs.add_argument("name")
    output(runs)
    logs = verb("logs", "the current run's trainer log")
    logs.add_argument("kind", type=_kind, choices=["ftj"])
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", type=int, default=None, help="only the last N lines")
    promote = verb("promote", "approve the next step or promote a waiting canary; --full promotes now")
    promote.add_argument("name")
    promote.add_argument("--full", action="store_true", help="promote now, skipping the remaining steps")
    approve = verb("approve", "open the manual gate before the canary's next step")
    approve.add_argument("name")
    approve.add_argument("--step", type=int, default=None, help="the step's weight (default: the next step)")
    abort = verb("abort", "roll the canary in flight back (spec.canary.abort)")
    abort.add_argument("name")
    abort.add_argument("--timeout", type=float, default=60, help="seconds to wait for the operator to re-arm")
    retry = verb("retry", "start the rolled-back version again from the first step")
    retry.add_argument("name")
    return top


def console() -> Console:
    # Piped output gets a fixed width, so scripts and logs see whole table rows.
    return Console() if sys.stdout.isatty() else Console(width=int(os.environ.get("COLUMNS", 140)))


def dump(data: Any, fmt: str) -> str:
    return json.dumps(data, indent=2) if fmt == "json" else yaml.safe_dump(data, sort_keys=False)


def get(kube: Kube, args: argparse.Namespace, out: Console) -> None:
    view: Callable[[dict[str, Any]], RenderableType] = ftj_view if args.kind == "ftj" else mdep_view
    line = ftj_line if args.kind == "ftj" else mdep_line

    def done(obj: dict[str, Any]) -> bool:
        return args.kind == "ftj" and (obj.get("status") or {}).get("phase") in TERMINAL

    if not args.watch:
        obj = kube.get(args.kind, args.name)
        if args.output:  # print(), not the console: scripts get the document unwrapped
            print(dump(obj, args.output))
        else:
            out.print(view(obj), markup=False, highlight=False)
        return
    if args.output or not out.is_terminal:  # a pipe: one line (or document) per change, like `kubectl get -w`
        last = None
        for obj in kube.watch(args.kind, args.name):
            text = json.dumps(obj) if args.output == "json" else dump(obj, "yaml") + "---" if args.output else line(obj)
            if text != last:
                print(text, flush=True)
                last = text
            if done(obj):
                return
        return
    with Live(console=out, refresh_per_second=4, transient=False) as live:
        for obj in kube.watch(args.kind, args.name):
            live.update(view(obj))
            if done(obj):
                return


def runs(kube: Kube, args: argparse.Namespace, out: Console) -> None:
    obj = kube.get("ftj", args.name)
    history = run_history(obj, kube.run_jobs(args.name), kube.run_pods(args.name))
    if args.output:
        print(dump(history, args.output))
    else:
        out.print(runs_table(args.name, history), markup=False, highlight=False)


def logs(kube: Kube, args: argparse.Namespace, out: Console) -> None:
    status = kube.get("ftj", args.name).get("status") or {}
    run = status.get("run")
    if not run:
        raise CliError(f"finetunejob {args.name} has not started a run yet")
    pods = kube.run_pods(args.name, int(run))
    if not pods:
        raise CliError(f"run {run} of finetunejob {args.name} has no trainer pod (its Job {status.get('jobName')})")
    pod = max(pods, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
    for chunk in kube.pod_log(pod["metadata"]["name"], args.follow, args.tail):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def manual(kube: Kube, args: argparse.Namespace, out: Console) -> None:
    """promote / approve / retry: one annotation, written only if the canary is still the one read
    (a JSON patch that tests it), so a command typed for one version never acts on the next."""
    obj = kube.get("mdep", args.name)
    if args.verb == "promote":
        patch, said = actions.promote(obj, args.full)
    elif args.verb == "approve":
        patch, said = actions.approve(obj, args.step)
    else:
        patch, said = actions.retry(obj)
    kube.patch("mdep", args.name, patch, json_patch=True)
    out.print(f"modeldeployment {args.name}: {said}", markup=False)


def abort(kube: Kube, args: argparse.Namespace, out: Console) -> None:
    obj = kube.get("mdep", args.name)
    plan, canary = actions.abort_plan(obj), obj["status"]["canaryVersion"]  # abort_plan: a canary is in flight
    if plan == "rearm":
        # spec.canary.abort is edge-triggered: the true left from an earlier abort stops nothing new.
        kube.patch("mdep", args.name, actions.abort_patch(False))
        deadline = time.monotonic() + args.timeout
        while (kube.get("mdep", args.name).get("status") or {}).get("abortObserved"):
            if time.monotonic() > deadline:
                raise CliError(
                    f"abort: the operator did not re-arm spec.canary.abort of {args.name} within {args.timeout:g}s "
                    "(is it running?); spec.canary.abort is false now"
                )
            time.sleep(0.5)
    kube.patch("mdep", args.name, actions.abort_patch(True))
    out.print(f"modeldeployment {args.name}: aborting canary {canary} (spec.canary.abort: true)", markup=False)


VERBS = {"get": get, "runs": runs, "logs": logs, "promote": manual, "approve": manual, "retry": manual, "abort": abort}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        kube = Kube(Target(args.kubeconfig, args.context, args.namespace))
        VERBS[args.verb](kube, args, console())
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C ends a watch or a followed log: not an error
        sys.exit(0)
