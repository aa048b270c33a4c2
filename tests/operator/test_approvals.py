"""Version-named approvals, promotions and retries (pure): what applies to which rollout."""

from __future__ import annotations

import pytest

from kubetune_operator.approvals import APPROVE, PROMOTE, RETRY, State, abort_action, judge

STEPS = (5, 25, 50, 100)
AT_25 = State(canary="v2", steps=STEPS, step=1, rolled_back=None, desired="v2")
IDLE = State(canary=None, steps=STEPS, step=0, rolled_back="v2", desired="v2")


@pytest.mark.parametrize(
    ("key", "value", "state", "ok", "says"),
    [
        (APPROVE, "v2/50", AT_25, True, "approves step 50% of v2"),
        (APPROVE, "v2/100", AT_25, True, "approves step 100% of v2"),  # a later gate of this canary
        (APPROVE, "v1/50", AT_25, False, "names version v1, but the canary in flight is v2"),  # stale
        (APPROVE, "v2/25", AT_25, False, "step 25% is already reached"),
        (APPROVE, "v2/5", AT_25, False, "step 5% is already reached"),
        (APPROVE, "v2/30", AT_25, False, "30% is not one of the steps"),
        (APPROVE, "50", AT_25, False, "must be <version>/<weight>, e.g. v2/50"),  # the old, unversioned form
        (APPROVE, "v2/", AT_25, False, "must be <version>/<weight>"),
        (APPROVE, "v2/50", IDLE, False, "no canary in flight"),
        (PROMOTE, "v2", AT_25, True, "promotes v2 now, skipping steps [50, 100] and their analysis"),
        (PROMOTE, "true", AT_25, False, "names version true, but the canary in flight is v2"),  # the old form
        (PROMOTE, "v1", AT_25, False, "the canary in flight is v2"),
        (PROMOTE, "v2", IDLE, False, "no canary in flight"),
        (RETRY, "v2", IDLE, True, "retries v2 from step 5%"),
        (RETRY, "v1", IDLE, False, "names version v1, but the spec asks for v2"),
        (RETRY, "v2", AT_25, False, "canary v2 is in flight, nothing to retry"),
        (RETRY, "v3", State(None, STEPS, 0, "v2", "v3"), False, "version v3 was not rolled back"),
    ],
)
def test_judge(key, value, state, ok, says):
    ruling = judge(key, value, state)
    assert ruling.ok is ok and says in ruling.message
    assert ruling.message.endswith(": ignored") is not ok


def test_promote_at_the_last_step_skips_nothing():
    assert judge(PROMOTE, "v2", State("v2", STEPS, 3, None)).message == "promotes v2 now"


def test_an_approval_carries_the_weight_it_opens():
    assert judge(APPROVE, "v2/100", AT_25).step == 100
    assert judge(APPROVE, "v1/100", AT_25).step is None


@pytest.mark.parametrize(
    ("flag", "observed", "canary", "action"),
    [
        (True, False, "v1", "rollback"),  # abort given while v1 rolls: v1 stops
        (True, True, "v2", "none"),  # still true in the repo when v2 arrives: v2 is not touched
        (True, True, None, "none"),
        (True, False, None, "ignore"),  # nothing in flight: it aborts nothing, now or later
        (False, True, None, "rearm"),  # set false: the next true counts again
        (False, True, "v2", "rearm"),
        (False, False, "v2", "none"),
    ],
)
def test_abort_is_edge_triggered(flag, observed, canary, action):
    assert abort_action(flag, observed, canary) == action
