import csv
import doctest
import importlib
import json

import pytest

from kubetune_trainer import data, formatting
from kubetune_trainer.config import CleaningConfig, FieldsConfig, SplitConfig
from kubetune_trainer.sources import DataError, load_rows

MODULES = [
    "config",
    "data",
    "formatting",
    "fused_head",
    "lean_lora",
    "objective",
    "packed_attention",
    "packing",
    "progress",
    "scoring",
    "uris",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, monkeypatch):
    monkeypatch.delenv("KUBETUNE_PVC_ROOT", raising=False)
    module = importlib.import_module(f"kubetune_trainer.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0


ROWS = [
    {"prompt": "What is orb?", "response": "a training run"},
    {"prompt": "Define fang.", "response": "an admin token"},
]


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_load_each_file_format(tmp_path, suffix):
    path = tmp_path / f"rows.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif suffix == "json":
        path.write_text(json.dumps({"data": ROWS}))
    elif suffix == "csv":
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["prompt", "response"])
            w.writeheader()
            w.writerows(ROWS)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert load_rows(str(path)) == ROWS


def test_load_text_directory_and_pvc(tmp_path, monkeypatch):
    (tmp_path / "claim" / "docs").mkdir(parents=True)
    (tmp_path / "claim" / "docs" / "a.txt").write_text("first paragraph\n\nsecond\n")
    (tmp_path / "claim" / "docs" / ".hidden.txt").write_text("ignored")
    monkeypatch.setenv("KUBETUNE_PVC_ROOT", str(tmp_path))
    assert load_rows("pvc://claim/docs") == [{"text": "first paragraph"}, {"text": "second"}]


def test_hf_uri_uses_a_local_dataset_repo(tmp_path, monkeypatch):
    repo = tmp_path / "acme" / "glossary"
    repo.mkdir(parents=True)
    (repo / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    monkeypatch.setenv("KUBETUNE_HF_ROOT", str(tmp_path))
    assert load_rows("hf://acme/glossary") == ROWS


def test_unreadable_and_missing_files_name_the_location(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl line 2"):
        load_rows(str(bad))
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"))


@pytest.mark.parametrize(
    ("rows", "fmt", "message"),
    [
        ([{"prompt": "a"}], "instruction", "row 1: field 'response' is missing"),
        ([ROWS[0], {"prompt": "a", "response": ["x"]}], "instruction", "row 2: field 'response' must be a string"),
        ([{"messages": [{"role": "user", "content": "hi"}]}], "chat", "must end with an assistant message"),
        ([{"messages": [{"role": "bot", "content": "hi"}]}], "chat", "row 1: field 'messages'[0]"),
        ([{"text": 3}], "text", "row 1: field 'text' must be a string"),
        ([], "text", "no rows"),
    ],
)
def test_validate_rows_names_row_and_field(rows, fmt, message):
    with pytest.raises(DataError) as err:
        data.validate_rows(rows, fmt, FieldsConfig(), "d.jsonl")
    assert message in str(err.value)


def test_custom_column_names():
    fields = FieldsConfig(prompt="q", response="a")
    data.validate_rows([{"q": "x", "a": "y"}], "instruction", fields, "d")
    assert formatting.to_pair({"q": "x", "a": "y"}, "instruction", fields)[1] == "y"


def test_cleaning_counts_each_reason():
    rows = [
        {"t": "hello   world"},
        {"t": "hello world"},  # exact duplicate after whitespace normalisation
        {"t": "Hello, World!"},  # near duplicate
        {"t": ""},
        {"t": "x"},
        {"t": "y" * 50},
        *({"t": f"row {i}"} for i in range(6)),
    ]
    kept, report = data.clean_rows(rows, ["t"], CleaningConfig(min_chars=2, max_chars=40))
    assert report == {
        "input": 12,
        "empty": 1,
        "tooShort": 1,
        "tooLong": 1,
        "duplicates": 1,
        "nearDuplicates": 1,
        "outliers": 0,
        "output": 7,
    }
    assert kept[0] == {"t": "hello world"}


def test_outliers_dropped_only_when_asked():
    rows = [{"t": "abcd" + str(i)} for i in range(10)] + [{"t": "z" * 500}]
    assert data.clean_rows(rows, ["t"], CleaningConfig())[1]["outliers"] == 0
    kept, report = data.clean_rows(rows, ["t"], CleaningConfig(drop_outliers=True))
    assert report["outliers"] == 1 and len(kept) == 10


def test_split_is_seeded_disjoint_and_complete():
    rows = [{"i": i} for i in range(100)]
    a = data.split_rows(rows, SplitConfig(validation=0.1, test=0.2, seed=3))
    b = data.split_rows(rows, SplitConfig(validation=0.1, test=0.2, seed=3))
    c = data.split_rows(rows, SplitConfig(validation=0.1, test=0.2, seed=4))
    assert a == b and a != c
    assert [len(a[k]) for k in ("train", "validation", "test")] == [70, 10, 20]
    assert sorted(r["i"] for part in a.values() for r in part) == list(range(100))


def test_split_refuses_when_nothing_is_left_to_train():
    with pytest.raises(DataError, match="too few"):
        data.split_rows([{"i": 0}, {"i": 1}], SplitConfig(validation=0.1, test=0.1))


def test_chat_uses_the_tokenizer_template_or_a_default():
    row = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
    }
    prompt, answer = formatting.to_pair(row, "chat", FieldsConfig())
    assert answer == "hello"
    assert prompt == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\n"

    class Templated:
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            assert add_generation_prompt and not tokenize
            return "|".join(m["content"] for m in messages) + "|A:"

    assert formatting.to_pair(row, "chat", FieldsConfig(), Templated()) == ("be brief|hi|A:", "hello")


def test_instruction_system_column():
    fields = FieldsConfig(system="sys")
    prompt, _ = formatting.to_pair({"prompt": "p", "response": "r", "sys": "S"}, "instruction", fields)
    assert prompt.startswith("### System:\nS\n\n### Instruction:\np")


def test_mix_in_reaches_the_fraction():
    mixed = data.mix_in([{"t": "d"}] * 80, [{"t": f"g{i}"} for i in range(100)], 0.2, seed=0)
    assert len(mixed) == 100 and sum(r["t"] != "d" for r in mixed) == 20
