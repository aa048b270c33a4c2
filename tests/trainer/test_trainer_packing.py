"""Packing must not change what the model sees: each packed example's loss equals its loss alone."""

import pytest
import torch

from kubetune_trainer.formatting import instruction_prompt
from kubetune_trainer.loss import token_losses
from kubetune_trainer.packing import IGNORE, collate, equal_token_batches, flatten, pack, token_batches, tokenize_pair


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


@pytest.mark.parametrize("budget", [1, 7, 16, 40, 1000])
def test_token_batches_cover_every_row_once_within_the_budget(budget):
    lengths = [5, 1, 4, 2, 2, 9, 3, 12, 1, 6]
    rows = [{"input_ids": [0] * n} for n in lengths]
    batches = token_batches(rows, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= budget or len(b) == 1  # a row longer than the budget goes alone
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)  # neighbours in length


def test_equal_token_batches_tiny_example():
    """12 short rows and 4 long ones, batchSize 4 -> 4 batches of 4 examples on average: short rows share
    batches, long rows go in pairs, and no batch costs more than the smallest budget allowing 4 (16)."""
    lengths = [2] * 12 + [8] * 4
    rows = [{"input_ids": [0] * n} for n in lengths]
    batches = equal_token_batches(rows, 4)
    assert batches == [[0, 1, 2, 3, 4, 5, 6, 7], [8, 9, 10, 11], [12, 13], [14, 15]]
    assert [len(b) * max(lengths[i] for i in b) for b in batches] == [16, 8, 16, 16]


@pytest.mark.parametrize("n_batches", [1, 2, 3, 5, 7, 10, 50])
def test_equal_token_batches_gives_exactly_that_many_covering_every_row_once(n_batches):
    lengths = [5, 1, 4, 2, 2, 9, 3, 12, 1, 6]
    rows = [{"input_ids": [0] * n} for n in lengths]
    batches = equal_token_batches(rows, n_batches)
    assert len(batches) == min(n_batches, len(rows))  # never an empty batch
    assert sorted(i for b in batches for i in b) == list(range(len(rows)))
    assert [lengths[i] for b in batches for i in b] == sorted(lengths)  # neighbours in length
    # No batch costs more than the one the same count of plain batchSize-sized sorted batches needs most.
    size = -(-len(rows) // n_batches)
    plain = [sorted(lengths)[i : i + size] for i in range(0, len(rows), size)]
    assert max(len(b) * max(lengths[i] for i in b) for b in batches) <= max(len(b) * b[-1] for b in plain)


def test_flatten_is_one_row_with_restarting_positions():
    ex = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([3, 1, 2])]
    row = flatten(ex)
    assert row["input_ids"] == [0, 0, 0, 1, 2, 2] and row["labels"] == row["input_ids"]
    assert row["position_ids"] == [0, 1, 2, 0, 0, 1]
    assert pack(ex, 6) == [flatten([ex[0], ex[2], ex[1]])]  # pack's rows are flattened bins
