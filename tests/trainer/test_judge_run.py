"""A real tiny training run judged by the real judge program: eval.json's judge block and the gate's verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_dev.processes import free_port
from kubetune_trainer import recipe
from kubetune_trainer.environment import TrainerEnv
from tests.support.judge_process import JudgeProcess
from tests.trainer.conftest import GOLDEN

pytestmark = pytest.mark.slow


def judged_spec(url: str, steps: int, gate: float) -> dict[str, object]:
    return {
        "lora": {"r": 16, "dropout": 0.0},
        "training": {"maxSteps": steps, "evalSteps": 50, "scheduler": "cosine", "warmupRatio": 0.05},
        "evaluation": {
            "goldenDatasetUri": str(GOLDEN),
            "maxNewTokens": 8,
            "judge": {"url": url, "maxPrompts": 12, "retries": 1, "timeoutSeconds": 5},
            "gates": {"minJudgeWinRate": gate},
        },
    }


def run(spec: Path, out: Path, tmp_path: Path) -> tuple[dict[str, object], dict[str, object]]:
    term = tmp_path / "termination-log"
    term.write_text("")
    outcome = recipe.run(str(spec), str(out), env=TrainerEnv(metrics_port=0, termination_log=term))
    return outcome, json.loads(term.read_text())


def test_a_trained_model_wins_the_judge_and_passes_the_gate(write_spec, tmp_path):
    with JudgeProcess() as j:  # the answer holding more of the reference's words wins
        outcome, message = run(write_spec(judged_spec(j.url, 200, 0.6)), tmp_path / "out", tmp_path)
        stats = j.stats()
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    verdicts = report["judge"]
    assert verdicts["judged"] == 12 and stats["completions"] == 24  # each prompt in both orders
    assert verdicts["wins"] > verdicts["losses"], verdicts  # the base model never says the glossary's words
    assert verdicts["winRate"] == pytest.approx((verdicts["wins"] + verdicts["ties"] / 2) / 12)
    assert verdicts["positionConsistency"] == 1.0  # a fair judge does not care about order
    assert report["tuned"]["judgeWinRate"] == verdicts["winRate"] >= 0.6
    assert outcome["evalPassed"] is True and report["evalPassed"] is True
    assert message["judge"] == verdicts and message["evalPassed"] is True  # what the operator reads


def test_an_unreachable_judge_fails_the_run_evaluation_not_silently(write_spec, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    outcome, message = run(write_spec(judged_spec(url, 2, 0.1)), tmp_path / "out", tmp_path)
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert outcome["phase"] == "Succeeded" and outcome["evalPassed"] is False
    assert url in report["judge"]["error"] and "judgeWinRate" not in report["tuned"]
    assert any(r.startswith("JudgeUnavailable: ") for r in report["gateFailures"])
    assert message["evalPassed"] is False and url in message["judge"]["error"]


def test_a_position_biased_judge_gives_ties_and_fails_a_high_gate(write_spec, tmp_path):
    with JudgeProcess("--position-bias", "first") as j:
        outcome, _ = run(write_spec(judged_spec(j.url, 2, 0.6)), tmp_path / "out", tmp_path)
    verdicts = json.loads((tmp_path / "out" / "eval.json").read_text())["judge"]
    assert verdicts["ties"] == verdicts["judged"] == 12 and verdicts["positionConsistency"] == 0.0
    assert verdicts["winRate"] == 0.5 and outcome["evalPassed"] is False
    assert "judgeWinRate 0.5 < minJudgeWinRate 0.6" in outcome["gateFailures"]
