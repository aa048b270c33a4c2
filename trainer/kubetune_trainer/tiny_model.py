# torch, transformers, kubernetes and prometheus-client are partly untyped:
# mypy: disable-error-code="no-untyped-call"
"""A tiny Llama-shaped causal LM and tokenizer, built locally so nothing is downloaded.

The tokenizer is a byte-level BPE trained on the bundled ``examples/data`` text; the model has random
weights (hidden 64, 2 layers, 4 heads). Both are deterministic and cached under
``$KUBETUNE_CACHE/tiny-model`` (default ``~/.cache/kubetune/tiny-model``), so tests and the demo build
them once. ``python -m kubetune_trainer make-tiny-model OUT`` writes a copy usable as ``baseModel.uri``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from kubetune_trainer import uris

# Bump when the recipe changes so stale caches are rebuilt, not reused.
RECIPE = "tiny-llama-v2"
DATA_DIR = Path(__file__).resolve().parents[2] / "examples" / "data"
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def default_dir() -> Path:
    return uris.cache_dir() / "tiny-model"


def corpus(data_dir: Path = DATA_DIR) -> list[str]:
    """The bundled text the tokenizer learns from (every string in every example file)."""
    texts: list[str] = []
    for path in sorted(data_dir.glob("*")):
        if path.suffix == ".txt":
            texts.extend(p for p in path.read_text().split("\n\n") if p.strip())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                texts.extend(v for v in json.loads(line).values() if isinstance(v, str))
    # The templates of formatting.py, so their words are single tokens rather than bytes.
    texts.append("### System:\n### Instruction:\n### Response:\n<|user|>\n<|assistant|>\n<|system|>\n")
    return texts


def build_tokenizer(texts: list[str], vocab_size: int = 1024) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_model(
    tokenizer: Any, hidden: int = 64, layers: int = 2, heads: int = 4, seed: int = 0, init_std: float = 0.1
) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    # init_std 0.1 rather than Llama's 0.02: the frozen LM head of a random model with std 0.02 caps
    # every logit near 1, so no adapter could ever push the loss far below log(vocab).
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def ensure_tiny_model(out: Path | None = None) -> Path:
    """Return a directory holding the tiny model + tokenizer, building it if missing."""
    out = Path(out) if out else default_dir()
    marker = out / "kubetune-recipe.txt"
    if marker.exists() and marker.read_text() == RECIPE:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so a concurrent or killed build never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out.parent))
    tokenizer = build_tokenizer(corpus())
    model = build_model(tokenizer)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "kubetune-recipe.txt").write_text(RECIPE)
    if out.exists():
        shutil.rmtree(out)
    try:
        os.rename(tmp, out)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out
