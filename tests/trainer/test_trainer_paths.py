"""pvc:// locations cannot leave their claim: no `..`, no absolute path after the claim, no symlink in
the data that leads out of the claim's mount (the trainer refuses; the CRD refuses `..` at admission)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer import uris
from kubetune_trainer.cli import main


@pytest.fixture
def claims(tmp_path, monkeypatch) -> Path:
    """A claims root with claim `data` (a dataset in it) and a host file outside every claim."""
    root = tmp_path / "pvc"
    (root / "data" / "sets").mkdir(parents=True)
    (root / "data" / "sets" / "ok.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    (root / "other").mkdir()
    (tmp_path / "host-secret").write_text("root:x:0:0\n")
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(root))
    return root


def test_a_path_inside_its_claim_resolves_under_the_mount(claims):
    assert uris.local_path("pvc://data/sets/ok.jsonl") == (claims / "data/sets/ok.jsonl").resolve()
    assert uris.local_path("pvc://data/not-yet/written") == (claims / "data/not-yet/written").resolve()
    assert uris.local_path("pvc://data/sets/") == (claims / "data/sets").resolve()


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("pvc://data/../../host-secret", "may not contain '..'"),
        ("pvc://data/sets/../../other/x", "may not contain '..'"),
        ("pvc://data/..", "may not contain '..'"),
        ("pvc://../host-secret", "claim name"),
        ("pvc://./data/x", "claim name"),
        ("pvc:///etc/passwd", "claim name"),
        ("pvc://data//etc/passwd", "relative to the claim"),
        ("pvc://", "claim name"),
    ],
)
def test_uris_that_climb_out_are_refused(claims, uri, says):
    with pytest.raises(uris.EscapesClaim, match=says):
        uris.local_path(uri)


def test_a_plain_path_under_the_claims_root_is_held_to_the_same_rules(claims):
    """KUBETUNE_OUTPUT_DIR is such a path: the operator resolved pvc://claim/... for the pod."""
    assert uris.local_path(str(claims / "data/sets/ok.jsonl")) == (claims / "data/sets/ok.jsonl").resolve()
    with pytest.raises(uris.EscapesClaim):
        uris.local_path(str(claims / "data" / ".." / ".." / "host-secret"))
    assert uris.local_path("/elsewhere/x") == Path("/elsewhere/x")  # the image's own files are not a claim


def test_a_symlink_out_of_the_claim_is_refused(claims, tmp_path):
    (claims / "data" / "link.jsonl").symlink_to(tmp_path / "host-secret")
    (claims / "data" / "to-other").symlink_to(claims / "other")
    with pytest.raises(uris.EscapesClaim, match="outside its claim"):
        uris.local_path("pvc://data/link.jsonl")
    with pytest.raises(uris.EscapesClaim, match="outside its claim"):  # another claim of the pod is outside too
        uris.local_path("pvc://data/to-other/x")


def test_a_symlink_inside_a_folder_of_data_is_refused(claims, tmp_path):
    (claims / "data" / "sets" / "more.jsonl").symlink_to(tmp_path / "host-secret")
    with pytest.raises(uris.EscapesClaim, match=r"more\.jsonl is a symlink out of its claim"):
        uris.local_path("pvc://data/sets")


def test_a_symlink_that_stays_inside_the_claim_is_fine(claims):
    (claims / "data" / "latest.jsonl").symlink_to(claims / "data" / "sets" / "ok.jsonl")
    assert uris.local_path("pvc://data/latest.jsonl") == (claims / "data/sets/ok.jsonl").resolve()


def test_the_trainer_fails_the_job_for_good_and_reads_nothing_outside(claims, tmp_path, write_spec, monkeypatch):
    """A dataset symlinked to a host file: exit 2 (final, InvalidConfig), the host file's content appears
    nowhere in what the trainer reports."""
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(log))
    (claims / "data" / "escape.jsonl").symlink_to(tmp_path / "host-secret")
    spec = write_spec({"dataset": {"uri": "pvc://data/escape.jsonl"}})
    assert main(["train", str(spec), "--output", str(tmp_path / "out")]) == 2
    message = json.loads(log.read_text())
    assert message["reason"] == "InvalidConfig" and "outside its claim" in message["message"]
    assert "root:x" not in log.read_text() + (tmp_path / "out" / "result.json").read_text()
