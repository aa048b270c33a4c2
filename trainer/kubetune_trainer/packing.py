"""Tokenise once, then pack examples into rows whose attention never crosses an example boundary.

Each example becomes ``input_ids`` plus ``labels`` that are *already shifted*: ``labels[i]`` is the token
to predict from position ``i``, or -100. Pre-shifting means the last token of one packed example never
learns to predict the first token of the next.

A packed row carries ``position_ids`` that restart at 0 for every example. With no attention mask and no
cache, transformers (>= 5) turns restarting positions into a block-diagonal causal mask (sdpa/eager) or
variable-length flash attention on GPU, so no padding is computed within a row.
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
    rows = []
    for members in bins:
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for i in members:
            row["input_ids"] += examples[i]["input_ids"]
            row["labels"] += examples[i]["labels"]
            row["position_ids"] += list(range(len(examples[i]["input_ids"])))
        rows.append(row)
    return rows


def batch_indices(rows: list[dict[str, list[int]]], batch_size: int) -> list[list[int]]:
    """Group rows of similar length into batches (little padding); batch order is shuffled per epoch.

    >>> batch_indices([{"input_ids": [0] * n} for n in (5, 1, 4, 2)], 2)
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def epoch_order(n_batches: int, seed: int, epoch: int) -> list[int]:
    """A deterministic batch order per epoch, so a resumed run replays exactly the same data."""
    order = list(range(n_batches))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def collate(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch into tensors.

    Packed rows (they have ``position_ids``) get no attention mask: the restarting positions define it,
    and padding continues as its own short "example" that predicts nothing. Unpacked rows get the usual
    2D padding mask.
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
    else:
        out["attention_mask"] = torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows]
        )
    return out
