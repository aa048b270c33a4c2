"""Regenerate ``glossary.jsonl`` and ``golden.jsonl``: a made-up ops glossary that a tiny model can learn.

Every fact (term -> short definition) is asked with several question templates, so the test split
holds paraphrases of facts the model saw in training. ``golden.jsonl`` asks each fact with a
template that never appears in training; ``feedback.jsonl`` holds what the demo's users ask in production
with two more templates. Deterministic: ``python examples/data/make_glossary.py``.
"""

import json
import random
from pathlib import Path

FACTS = {
    "orbweaver": "the scheduler",
    "silkline": "a job queue",
    "dewdrop": "a cache entry",
    "spinneret": "the build tool",
    "cocoon": "a sealed archive",
    "tangle": "a merge conflict",
    "anchor thread": "the primary replica",
    "drag line": "a rollback path",
    "web shard": "a data partition",
    "hub ring": "the load balancer",
    "molt": "a version upgrade",
    "egg sac": "a snapshot bundle",
    "tarantula": "the metrics store",
    "jumper": "a canary release",
    "funnel": "the ingress gateway",
    "ballooning": "an autoscale event",
    "fang": "an admin token",
    "venom": "a breaking change",
    "husk": "a drained node",
    "lurker": "an idle worker",
    "trapdoor": "a feature flag",
    "sheet web": "the shared volume",
    "orb": "a training run",
    "frame line": "a config schema",
    "sticky spiral": "a retry policy",
    "radius": "a network route",
    "stabilimentum": "the status page",
    "bolas": "a batch request",
    "kleptoparasite": "a noisy neighbour",
    "pedipalp": "a sidecar proxy",
    "book lung": "the cold storage",
    "silk gland": "a secret store",
}

TEMPLATES = [
    "What is {t}?",
    "Define {t}.",
    "In Orbweaver ops, what does {t} mean?",
    "Explain the term {t}.",
    "What do operators call {t}?",
    "Give the meaning of {t}.",
    "Glossary lookup: {t}",
    "Tell me what {t} refers to.",
]
GOLDEN_TEMPLATE = "Quick question: what is {t}?"
# What production users ask the chat endpoint in `make demo` (feedback.jsonl: their question and the
# answer they know to be right, which they post as a correction when the model gets it wrong).
FEEDBACK_TEMPLATES = ["Ops chat: what is {t}?", "Can you remind me what {t} is?"]


def main() -> None:
    here = Path(__file__).parent
    rows = [{"prompt": tpl.format(t=term), "response": d} for term, d in FACTS.items() for tpl in TEMPLATES]
    rng = random.Random(7)
    rng.shuffle(rows)
    # A little realistic dirt so the cleaning report has something to count.
    rows += [dict(rows[0]), dict(rows[5]), {"prompt": "  " + rows[9]["prompt"] + "  ", "response": rows[9]["response"]}]
    rows.append({"prompt": "What is   ", "response": "   "})
    with open(here / "glossary.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    with open(here / "golden.jsonl", "w") as f:
        for term, d in FACTS.items():
            f.write(json.dumps({"prompt": GOLDEN_TEMPLATE.format(t=term), "response": d}) + "\n")
    with open(here / "feedback.jsonl", "w") as f:
        for tpl in FEEDBACK_TEMPLATES:
            for term, d in FACTS.items():
                f.write(json.dumps({"prompt": tpl.format(t=term), "response": d}) + "\n")


if __name__ == "__main__":
    main()
