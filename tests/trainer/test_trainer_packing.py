"""Packing must not change what the model sees: each packed example's loss equals its loss alone."""

import pytest
import torch

from kubetune_trainer.formatting import instruction_prompt
from kubetune_trainer.loss import token_losses
from kubetune_trainer.packing import IGNORE, collate, flatten, pack, tokenize_pair


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    return tok, model


def examples(tok, max_len=64):
    pairs = [
        (instruction_prompt("What is orb?"), "a training run"),
        (instruction_prompt("In Orbweaver ops, what does silk gland mean?"), "a secret store"),
        ("", "Operators watch resources in the cluster."),
        (instruction_prompt("Define fang."), "an admin token"),
    ]
    return [tokenize_pair(p, r, tok, max_len, prompt_loss=not p) for p, r in pairs]


def test_labels_are_shifted_and_cover_only_the_response(tiny):
    tok, _ = tiny
    ex = tokenize_pair("### Instruction:\nq\n\n### Response:\n", "a b", tok, 64)
    ids, labels = ex["input_ids"], ex["labels"]
    targets = [(i, t) for i, t in enumerate(labels) if t != IGNORE]
    assert labels[-1] == IGNORE
    assert all(ids[i + 1] == t for i, t in targets)  # position i predicts token i + 1
    assert targets[-1][1] == tok.eos_token_id  # the model learns to stop
    response = tok("a b", add_special_tokens=False)["input_ids"]
    assert [t for _, t in targets] == [*response, tok.eos_token_id]


def test_truncation_and_drop():
    class Tok:
        bos_token_id, eos_token_id = 1, 2

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [5] * len(text)}

    assert tokenize_pair("pppp", "rr", Tok(), 4) is None  # bos + 4 prompt tokens leave no room
    ex = tokenize_pair("pp", "rrrr", Tok(), 5)
    assert len(ex["input_ids"]) == 5 and ex["labels"] == [IGNORE, IGNORE, 5, 5, IGNORE]


def test_pack_keeps_every_token_and_restarts_positions():
    ex = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([5, 3, 3, 2, 7, 1])]
    rows = pack(ex, 8)
    assert all(len(r["input_ids"]) <= 8 for r in rows)
    assert sorted(t for r in rows for t in r["input_ids"]) == sorted(t for e in ex for t in e["input_ids"])
    assert len(rows) == 3  # 21 tokens in bins of 8: best fit needs no more than 3
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert starts[0] == 0 and len(starts) >= 1


def per_example_losses(model, rows_or_examples, tok):
    batch = collate(rows_or_examples, tok.pad_token_id)
    with torch.no_grad():
        return token_losses(model, batch)


def test_packed_loss_equals_loss_of_each_example_alone(tiny):
    tok, model = tiny
    ex = examples(tok)
    packed_rows = pack(ex, 256)
    assert len(packed_rows) == 1  # all four share one row, so cross-attention would show up
    packed = per_example_losses(model, packed_rows, tok)
    order = sorted(range(len(ex)), key=lambda i: -len(ex[i]["input_ids"]))  # pack() order
    alone = torch.cat([per_example_losses(model, [ex[i]], tok) for i in order])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)

    # Control: the same row without restarting positions lets examples attend to each other.
    naive = dict(packed_rows[0])
    naive.pop("position_ids")
    leaked = per_example_losses(model, [naive], tok)
    assert (leaked - alone).abs().max() > 1e-3


def test_padded_batch_of_packed_rows_matches_too(tiny):
    tok, model = tiny
    ex = examples(tok)
    rows = pack(ex, 40)  # several rows of different lengths -> right padding inside the batch
    assert len(rows) > 1
    batched = per_example_losses(model, rows, tok)
    one_by_one = torch.cat([per_example_losses(model, [r], tok) for r in rows])
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)


def test_right_padded_batch_needs_no_mask(tiny):
    """Unpacked rows of different lengths in one batch, no attention mask: causal attention never sees
    the right padding, so every example's loss is its loss alone."""
    tok, model = tiny
    ex = examples(tok)
    batch = collate(ex, tok.pad_token_id)
    assert set(batch) == {"input_ids", "labels"}  # no mask, no position ids
    assert len({len(e["input_ids"]) for e in ex}) > 1  # so there is padding
    with torch.no_grad():
        batched = token_losses(model, batch)
    alone = torch.cat([per_example_losses(model, [e], tok) for e in ex])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_flatten_is_one_row_with_restarting_positions():
    ex = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([3, 1, 2])]
    row = flatten(ex)
    assert row["input_ids"] == [0, 0, 0, 1, 2, 2] and row["labels"] == row["input_ids"]
    assert row["position_ids"] == [0, 1, 2, 0, 0, 1]
    assert pack(ex, 6) == [flatten([ex[0], ex[2], ex[1]])]  # pack's rows are flattened bins
