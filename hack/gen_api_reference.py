"""Generate the API reference section of README.md from the CRDs in crds/ (generated from api/kubetune_api).

python hack/gen_api_reference.py          # rewrite the section in README.md
python hack/gen_api_reference.py --check  # exit 1 if README.md is stale (a test runs this)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- api-reference:start -->", "<!-- api-reference:end -->"


def rows(schema: dict[str, Any], path: str, required: set[str]) -> list[str]:
    out = []
    for name, sub in (schema.get("properties") or {}).items():
        here = f"{path}.{name}" if path else name
        out.append(row(here, sub, name in required))
        for rule in sub.get("x-kubernetes-validations") or []:
            out.append(f"| `{here}` | rule | | {rule['message']} |")
        if sub.get("type") == "object":
            out += rows(sub, here, set(sub.get("required") or []))
        elif sub.get("type") == "array" and (sub.get("items") or {}).get("type") == "object":
            out += rows(sub["items"], f"{here}[]", set(sub["items"].get("required") or []))
    return out


def row(path: str, s: dict[str, Any], required: bool) -> str:
    kind = "int-or-string" if s.get("x-kubernetes-int-or-string") else s.get("type", "")
    if kind == "array":
        kind = f"[]{(s.get('items') or {}).get('type', '')}"
    facts = []
    if required:
        facts.append("required")
    if "default" in s:
        facts.append(f"default `{json.dumps(s['default'])}`")
    if "enum" in s:
        facts.append("one of " + ", ".join(f"`{v}`" for v in s["enum"]))
    for key, sign in (("minimum", ">"), ("maximum", "<")):
        if key in s:
            exclusive = s.get(f"exclusive{key.capitalize()}")
            facts.append(f"{sign}{'' if exclusive else '='} {s[key]}")
    if "pattern" in s:
        facts.append(f"pattern `{s['pattern']}`".replace("|", "\\|"))
    text = (s.get("description") or "").replace("|", "\\|").replace("\n", " ")
    return f"| `{path}` | {kind} | {'; '.join(facts)} | {text} |"


def render() -> str:
    parts = [START, "", "## API reference (generated from the API models in `api/` by `make crds`)", ""]
    for crd_file in sorted((REPO / "crds").glob("*.yaml")):
        crd = yaml.safe_load(crd_file.read_text())
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        parts += [
            f"### {names['kind']} (`{crd['spec']['group']}/{version['name']}`, short name `{names['shortNames'][0]}`)",
            "",
            schema.get("description", ""),
            "",
            "| field | type | constraints | description |",
            "|---|---|---|---|",
        ]
        for rule in schema["properties"]["spec"].get("x-kubernetes-validations") or []:
            parts.append(f"| `spec` | rule | | {rule['message']} |")
        parts += rows(schema["properties"]["spec"], "spec", set(schema["properties"]["spec"].get("required") or []))
        parts += rows(schema["properties"]["status"], "status", set())
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def updated(readme: str) -> str:
    section = render()
    if START in readme:
        head, rest = readme.split(START, 1)
        tail = rest.split(END, 1)[1]
        return head + section + tail
    return readme.rstrip("\n") + "\n\n" + section + "\n"


def main() -> int:
    path = REPO / "README.md"
    current = path.read_text()
    new = updated(current)
    if "--check" in sys.argv:
        if new != current:
            print("README.md's API reference is stale: run python hack/gen_api_reference.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
