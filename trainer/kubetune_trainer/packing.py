"""Tokenise once, then lay examples out in batches whose attention never crosses an example boundary.

Each example becomes ``input_ids`` plus ``labels`` that are *already shifted*: ``labels[i]`` is the token
to predict from position ``i``, or -100. Pre-shifting means the last token of one packed example never
learns to predict the first token of the next.

A batch is ``batchSize`` examples, as in every other trainer (HF's ``per_device_train_batch_size``).
With packing on (the usual case) a batch is ``batchSize`` examples drawn at random (``random_batches``,
HF's composition) laid out as one row (``flatten``): the row carries ``position_ids`` that restart at 0
for every example, so there is no padding at all (TRL's padding-free batches) and attention stays inside
each example: flash-attn's varlen kernel does that on GPU (transformers >= 5 turns the positions into one
varlen call), and elsewhere packed_attention.py calls sdpa once per example (a row x row block mask
would cost more than the rest of the model on CPU). Length-sorted batches would pad less in other
layouts, but make each step all short or all long examples, which trains measurably worse.

Without packing (and for prompt learning, whose virtual tokens need rows of their own) a batch is
``batchSize`` examples of similar length, one per row, right-padded (``batch_indices``); ``pack`` (best-fit
rows of at most ``maxSeqLength``) is for callers that want fixed-width rows.
"""

from __future__ import annotations

import bisect
import random
from typing import Any

IGNORE = -100


def tokenize_pair(
    prompt: str, response: str, tokenizer: Any, max_len: int, prompt_loss: bool = False
) -> dict[str, list[int]] | None:
    """Token ids and shifted labels; None when not even one response token fits in ``max_len``.

    Prompt and response are tokenised separately, exactly as the prompt is at generation time.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p_ids = bos + (tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else [])
    r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + r_ids)[:max_len]
    if len(ids) <= len(p_ids):
        return None
    first_target = 1 if prompt_loss else len(p_ids)
    labels = [ids[i + 1] if i + 1 >= first_target else IGNORE for i in range(len(ids) - 1)] + [IGNORE]
    return {"input_ids": ids, "labels": labels}


def pack(examples: list[dict[str, list[int]]], max_len: int) -> list[dict[str, list[int]]]:
    """Best-fit-decreasing bin packing of examples into rows of at most ``max_len`` tokens.

    >>> ex = [{"input_ids": [1] * n, "labels": [1] * n} for n in (3, 2, 2, 1)]
    >>> [r["position_ids"] for r in pack(ex, 4)]
    [[0, 1, 2, 0], [0, 1, 0, 1]]
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, bin index), kept sorted
    for i in order:
        n = len(examples[i]["input_ids"])
        slot = bisect.bisect_left(free, (n, -1))
        if slot < len(free):
            remaining, b = free.pop(slot)
        else:
            remaining, b = max_len, len(bins)
            bins.append([])
        bins[b].append(i)
        if remaining - n > 0:
            bisect.insort(free, (remaining - n, b))
    return [flatten([examples[i] for i in members]) for members in bins]


def flatten(examples: list[dict[str, list[int]]]) -> dict[str, list[int]]:
    """The examples as one row whose ``position_ids`` restart at every example (for a varlen kernel).

    >>> flatten([{"input_ids": [7, 8], "labels": [8, -100]}, {"input_ids": [9], "labels": [-100]}])
    {'input_ids': [7, 8, 9], 'labels': [8, -100, -100], 'position_ids': [0, 1, 0]}
    """
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        row["input_ids"] += ex["input_ids"]
        row["labels"] += ex["labels"]
        row["position_ids"] += list(range(len(ex["input_ids"])))
    return row


def batch_indices(rows: list[dict[str, list[int]]], batch_size: int) -> list[list[int]]:
    """Group rows of similar length into batches (little padding); batch order is shuffled per epoch.

    >>> batch_indices([{"input_ids": [0] * n} for n in (5, 1, 4, 2)], 2)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def random_batches(n_rows: int, batch_size: int, seed: int) -> list[list[int]]:
    """Rows in a seeded random order, cut into batches of ``batch_size`` (the last one fewer): HF's composition.

    For one-row (padding-free) layouts, where a batch's cost does not depend on how alike its lengths are.

    >>> random_batches(5, 2, seed=0)
    [[2, 1], [0, 4], [3]]
    """
    order = list(range(n_rows))
    random.Random(seed).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n_rows, batch_size)]


def epoch_order(n_batches: int, seed: int, epoch: int) -> list[int]:
    """A deterministic batch order per epoch, so a resumed run replays exactly the same data."""
    order = list(range(n_batches))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def collate(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch into tensors, with no attention mask.

    Causal attention never looks right, so right padding is invisible to every real token: a mask would
    only cost time (and stop sdpa from using its causal kernel). Padding predicts nothing (labels -100).
    Packed rows (they have ``position_ids``) carry restarting positions, which is how the model knows
    where examples start; their padding continues as its own short "example".
    """
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    out: dict[str, Any] = {
        "input_ids": torch.tensor([r["input_ids"] + [pad_id] * (width - len(r["input_ids"])) for r in rows]),
        "labels": torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows]),
    }
    if "position_ids" in rows[0]:
        out["position_ids"] = torch.tensor(
            [r["position_ids"] + list(range(width - len(r["position_ids"]))) for r in rows]
        )
    return out
