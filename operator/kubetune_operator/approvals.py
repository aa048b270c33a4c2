"""Human decisions on a rollout (pure): annotations that name the version they are for, used once.

Modelled on Argo Rollouts' `kubectl argo rollouts promote / promote --full / retry`:

- `kubetune.io/approve-step: <version>/<weight>` opens the manual gate before step `weight` of
  canary `version` (Argo's `promote` at a pause). An approval for a later step of the same canary
  waits for its gate.
- `kubetune.io/promote: <version>` promotes that canary now, skipping the remaining steps and
  their analysis (Argo's `promote --full`); it is also how `autoPromote: false` ends.
- `kubetune.io/retry: <version>` starts a rolled-back version again from the first step (Argo's
  `retry`); without it a rolled-back version waits for the next spec change.

The operator removes an annotation when it acts on it, and also when it cannot apply (another
version, a step already passed, a malformed value), with an Event saying why; so an annotation
left over from one rollout never decides a later one. Abort is `spec.canary.abort` (see the
reconcile): it stops the canary in flight when the operator first sees it true, and no later one.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune_operator import api

APPROVE = f"{api.GROUP}/approve-step"
PROMOTE = f"{api.GROUP}/promote"
RETRY = f"{api.GROUP}/retry"
KEYS = (APPROVE, PROMOTE, RETRY)


@dataclass(frozen=True)
class State:
    """What the annotations are judged against: the rollout as the status says it is."""

    canary: str | None  # the canary version in flight
    steps: tuple[int, ...]
    step: int  # index of the canary's current step
    rolled_back: str | None  # the version that was rolled back last
    desired: str | None = None  # the version the spec asks for


@dataclass(frozen=True)
class Ruling:
    ok: bool  # False: the annotation is removed unused
    message: str
    step: int | None = None  # the weight an approval opens


def judge(key: str, value: str, s: State) -> Ruling:
    """Whether a version-named annotation applies to the rollout `s`, and why (not).

    >>> s = State(canary="abc", steps=(25, 50, 100), step=0, rolled_back=None)
    >>> judge(APPROVE, "abc/50", s)
    Ruling(ok=True, message='approves step 50% of abc', step=50)
    >>> judge(APPROVE, "old/50", s).message
    'kubetune.io/approve-step=old/50 names version old, but the canary in flight is abc: ignored'
    >>> judge(APPROVE, "50", s).message
    'kubetune.io/approve-step=50 must be <version>/<weight>, e.g. abc/50: ignored'
    >>> judge(PROMOTE, "abc", s).ok, judge(PROMOTE, "true", s).ok
    (True, False)
    """
    name = f"{key}={value}"
    if key == RETRY:
        if s.canary is not None:
            return Ruling(False, f"{name}: canary {s.canary} is in flight, nothing to retry: ignored")
        if value != s.desired:
            return Ruling(False, f"{name} names version {value}, but the spec asks for {s.desired}: ignored")
        if value != s.rolled_back:
            return Ruling(False, f"{name}: version {value} was not rolled back: ignored")
        return Ruling(True, f"retries {value} from step {s.steps[0]}%")
    if s.canary is None:
        return Ruling(False, f"{name}: no canary in flight: ignored")
    if key == PROMOTE:
        if value != s.canary:
            return Ruling(False, f"{name} names version {value}, but the canary in flight is {s.canary}: ignored")
        rest = list(s.steps[s.step + 1 :])
        skipped = f", skipping steps {rest} and their analysis" if rest else ""
        return Ruling(True, f"promotes {value} now{skipped}")
    version, _, weight = value.rpartition("/")
    next_weight = s.steps[min(s.step + 1, len(s.steps) - 1)]
    if not version or not weight.isdigit():
        return Ruling(False, f"{name} must be <version>/<weight>, e.g. {s.canary}/{next_weight}: ignored")
    if version != s.canary:
        return Ruling(False, f"{name} names version {version}, but the canary in flight is {s.canary}: ignored")
    w = int(weight)
    if w not in s.steps:
        return Ruling(False, f"{name}: {w}% is not one of the steps {list(s.steps)}: ignored")
    if s.steps.index(w) <= s.step:
        return Ruling(False, f"{name}: step {w}% is already reached: ignored")
    return Ruling(True, f"approves step {w}% of {version}", w)


def abort_action(flag: bool, observed: bool, canary: str | None) -> str:
    """What `spec.canary.abort` does now: it is edge-triggered, so a flag left true in a GitOps repo
    stops the canary in flight when first seen and no later version.

    >>> abort_action(True, False, "v1"), abort_action(True, True, "v2")  # v1 stopped; v2 rolls on
    ('rollback', 'none')
    >>> abort_action(False, True, None), abort_action(True, False, None)  # re-armed; nothing to stop
    ('rearm', 'ignore')
    """
    if not flag:
        return "rearm" if observed else "none"
    if observed:
        return "none"
    return "rollback" if canary else "ignore"
