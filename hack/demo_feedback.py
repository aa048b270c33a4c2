"""`make demo`'s production loop: traffic -> feedback -> retrain on it -> judged -> canary.

Room: the demo driver (hack/). It talks to the serving pods over loopback HTTP as users would, and to
the cluster through kubectl; it never writes capture files or status itself.

1. users ask the serving pods glossary questions on the chat endpoint, in two phrasings training never
   used (examples/data/feedback.jsonl); each answer carries its response id, and the user posts
   feedback for it: 5 when the answer names the definition, else 1 with the right definition as a
   correction. The pods capture requests and feedback to pvc://demo/captures/glossary-chat;
2. once the capture files are published, examples/finetunejob-feedback.yaml retrains from
   glossary-lora's adapter on those captures (corrections and up-rated answers become chat rows; a
   stable hash keeps a tenth of the prompts out for testing), and an LLM judge (the deterministic judge
   program, an OpenAI-compatible server on loopback) compares the tuned and the base model's answers
   to the held-out prompts in both orders;
3. the ModelDeployment is pointed at the new FineTuneJob: its adapter rolls out as a canary, gated by
   latency, errors and the users' ratings of canary vs stable.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VERSION_OF_ID = re.compile(r"^kt-(.+)-[0-9a-f]{32}$")
MIN_FEEDBACK_LINES = 48  # published feedback records before the retrain starts (64 questions are asked)


def post(url: str, body: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")  # type: ignore[no-any-return]


class Users(threading.Thread):
    """Ask, read the answer, rate it: the production traffic of the loop, until stopped."""

    def __init__(self, targets_file: Path, questions: list[dict[str, str]]) -> None:
        super().__init__(daemon=True)
        self.targets_file, self.questions, self.halt = targets_file, questions, threading.Event()
        self.asked = self.failed = 0
        self.ratings: dict[str, list[int]] = defaultdict(list)  # per served version

    @classmethod
    def from_examples(cls, targets_file: Path) -> Users:
        """Users who ask examples/data/feedback.jsonl's questions and know its answers."""
        rows = (REPO / "examples" / "data" / "feedback.jsonl").read_text().splitlines()
        return cls(targets_file, [json.loads(line) for line in rows])

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(timeout=30)

    def run(self) -> None:
        rng = random.Random(13)
        order = list(self.questions)
        while not self.halt.is_set():
            pods = [ep for g in json.loads(self.targets_file.read_text() or "[]") for ep in g["targets"]]
            if not pods:
                time.sleep(0.5)
                continue
            if self.asked % len(order) == 0:
                rng.shuffle(order)
            q = order[self.asked % len(order)]
            self.asked += 1
            try:
                self.ask(f"http://{rng.choice(pods)}", q)
            except OSError:
                self.failed += 1  # a pod that went away between the targets file and the request
                time.sleep(0.2)

    def ask(self, base: str, q: dict[str, str]) -> None:
        chat = {"messages": [{"role": "user", "content": q["prompt"]}], "max_tokens": 12, "temperature": 0}
        answer = post(f"{base}/v1/chat/completions", chat)
        text = answer["choices"][0]["message"]["content"]
        right = q["response"].lower() in text.lower()
        feedback: dict[str, Any] = {"id": answer["id"], "rating": 5 if right else 1}
        if not right:
            feedback["correction"] = q["response"]
        post(f"{base}/v1/feedback", feedback)
        version = VERSION_OF_ID.match(answer["id"])
        self.ratings[version.group(1) if version else "?"].append(feedback["rating"])

    def summary(self) -> str:
        per = ", ".join(f"{v}: {sum(r) / len(r):.2f} over {len(r)}" for v, r in sorted(self.ratings.items()))
        return f"{self.asked} questions asked ({self.failed} failed); mean rating per version: {per}"


def published_feedback(captures: Path) -> int:
    """Feedback records in published capture files (a .part file is still being written)."""
    return sum(len(f.read_text().splitlines()) for f in captures.glob("*/feedback-*.jsonl"))


class Judge:
    """The deterministic judge program (kubetune_dev.judge) as a process on loopback."""

    def __init__(self, log: Path) -> None:
        self.log = open(log, "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune_dev.judge", "--port", "0"], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(r"judge listening on (\S+)", log.read_text())
            if found:
                self.url = found.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise SystemExit(f"the judge did not start: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


def production_loop(
    cp, users: Users, pvc_root: Path, workdir: Path, wait_md, watch, say
) -> tuple[list[str], list[str]]:  # type: ignore[no-untyped-def]
    """Run the loop on the running glossary-chat, whose users have been asking and rating since the first
    canary; return what happened and what went wrong."""
    import yaml

    decisions: list[str] = []
    problems: list[str] = []
    captures = pvc_root / "demo" / "captures" / "glossary-chat"
    say("production loop: the users' questions, answers and ratings were captured; retrain on them")
    judge = Judge(workdir / "judge.log")
    try:
        deadline = time.monotonic() + 300
        while published_feedback(captures) < MIN_FEEDBACK_LINES:
            if time.monotonic() > deadline:
                problems.append(f"only {published_feedback(captures)} feedback records were published in 300s")
                return decisions, problems
            time.sleep(1)
        decisions.append(f"before retraining: {users.summary()}")
        ftj = yaml.safe_load((REPO / "examples" / "finetunejob-feedback.yaml").read_text())
        ftj["spec"]["evaluation"]["judge"]["url"] = judge.url
        say(f"kubectl apply -f examples/finetunejob-feedback.yaml (judge at {judge.url})")
        print(cp.kubectl("apply", "-f", "-", input=yaml.safe_dump(ftj)).stdout, end="")
        status = watch(cp, "glossary-feedback")
        sources = (status.get("data") or {}).get("sources") or []
        for s in sources:
            decisions.append(
                f"captures of {s.get('version')}: {s.get('requests')} requests, {s.get('feedback')} feedback -> "
                f"{s.get('rows')} rows (dropped: {s.get('dropped') or {}})"
            )
        j = status.get("judge") or {}
        decisions.append(
            f"judge: {j.get('wins')} wins, {j.get('ties')} ties, {j.get('losses')} losses of {j.get('judged')} "
            f"(win rate {j.get('winRate')}, position consistency {j.get('positionConsistency')})"
        )
        eval_ok = {c["type"]: c for c in status.get("conditions", [])}.get("EvalPassed", {})
        if status.get("phase") != "Succeeded" or eval_ok.get("status") != "True" or not j.get("judged"):
            problems.append(f"the retrain on captures was not judged and passed: {status.get('phase')} {eval_ok}")
            return decisions, problems
        say("the ModelDeployment now follows glossary-feedback: its adapter rolls out as a canary")
        patch = {"spec": {"adapter": {"fineTuneJobRef": {"name": "glossary-feedback"}}, "builtin": {"extraArgs": []}}}
        cp.kubectl("patch", "mdep", "glossary-chat", "--type=merge", "-p", json.dumps(patch))
        time.sleep(2)
        st, _ = wait_md(cp, "glossary-chat", ("Promoted", "RolledBack"))
        decisions.append(f"captured-data canary -> {st['phase']}: {st.get('message')}")
        decisions.append(f"after the rollout: {users.summary()}")
        if st["phase"] != "Promoted" or "glossary-feedback" not in (st.get("stableAdapterUri") or ""):
            problems.append(f"the retrained adapter was not promoted: {st['phase']}: {st.get('message')}")
    finally:
        judge.stop()
    return decisions, problems
