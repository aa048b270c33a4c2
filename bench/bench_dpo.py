"""DPO throughput of our trainer vs. trl's DPOTrainer, on the same pairs, tiny model, LoRA, steps and batch.

Both sides run in this process, one after the other (``--repeat N`` alternates them and keeps each side's
best, shared machines are noisy), from the same base weights and adapter seed. Tokens per second count the
non-padding tokens of the pairs each side trains on (prompt + chosen + prompt + rejected, as our tokenizer
gives them; trl tokenises the same strings), so the ratio is time per step.

    python bench/bench_dpo.py                      # default size: a table and the ratio
    python bench/bench_dpo.py --pairs 64 --steps 4 # a quick run (the smoke test's size)
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer"))
sys.path.insert(0, str(REPO / "api"))


def pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompts with a careful (chosen) and a curt (rejected) answer of log-normal length (median 20 words)."""
    words = (REPO / "examples" / "data" / "general.txt").read_text().split()
    rng = random.Random(seed)

    def text(median: int) -> str:
        start, length = rng.randrange(len(words)), min(200, max(3, int(rng.lognormvariate(math.log(median), 0.8))))
        return " ".join(words[(start + j) % len(words)] for j in range(length))

    return [
        {"prompt": f"Summarise note {i}: {text(8)}", "chosen": f"Certainly. {text(20)}", "rejected": f"No. {text(12)}"}
        for i in range(n)
    ]


def tokenized(tok: Any, rows: list[dict[str, str]], max_len: int) -> list[dict[str, list[int]]]:
    from kubetune_trainer.config import FieldsConfig
    from kubetune_trainer.preference import tokenize_preference

    return [e for r in rows if (e := tokenize_preference(r, FieldsConfig(), tok, max_len)) is not None]


def lora_config(args: argparse.Namespace) -> Any:
    import peft

    return peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM, r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"
    )


def base_model(args: argparse.Namespace) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="sdpa")


def side_ours(args: argparse.Namespace, tok: Any, rows: list[dict[str, str]]) -> float:
    import peft
    import torch

    from kubetune_trainer.config import TrainingConfig
    from kubetune_trainer.preference import PreferenceObjective
    from kubetune_trainer.train import train

    examples = tokenized(tok, rows, args.max_len)
    torch.manual_seed(args.seed)
    model = peft.get_peft_model(base_model(args), lora_config(args))
    cfg = TrainingConfig(
        max_steps=args.steps, batch_size=args.batch, learning_rate=args.lr, warmup_ratio=0.0, precision="fp32",
        eval_steps=10**6, logging_steps=10**6, checkpoint_steps=10**6, seed=args.seed,
    )  # fmt: skip
    objective = PreferenceObjective("dpo", 0.1, "sigmoid", 0.0, 0.1, tok.pad_token_id, model)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train(model, examples, [], cfg, pad_id=tok.pad_token_id, device="cpu", dtype=torch.float32,
              output_dir=Path(out), objective=objective)  # fmt: skip
        return time.perf_counter() - start


def side_trl(args: argparse.Namespace, tok: Any, rows: list[dict[str, str]]) -> float:
    import datasets
    import torch
    from trl import DPOConfig, DPOTrainer

    from kubetune_trainer.formatting import instruction_prompt

    data = datasets.Dataset.from_list([{**r, "prompt": instruction_prompt(r["prompt"])} for r in rows])
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as out:
        config = DPOConfig(
            output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch, learning_rate=args.lr,
            lr_scheduler_type="linear", warmup_steps=0, beta=0.1, max_length=args.max_len, report_to=[],
            logging_steps=10**6, save_strategy="no", use_cpu=True, bf16=False, seed=args.seed,
            dataloader_num_workers=0, disable_tqdm=True,
        )  # fmt: skip
        trainer = DPOTrainer(
            model=base_model(args), args=config, train_dataset=data, processing_class=tok, peft_config=lora_config(args)
        )
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=320)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="tiny model dir (default: the cached one)")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    from kubetune_trainer.tiny_model import ensure_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = args.model or str(ensure_tiny_model())
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.pad_token = tok.pad_token or tok.eos_token
    rows = pairs(args.pairs, args.seed)
    # The tokens both sides see: each step takes `batch` pairs; epochs wrap over the data.
    per_pair = [len(e["input_ids"]) + len(e["rejected_input_ids"]) for e in tokenized(tok, rows, args.max_len)]
    tokens = sum(per_pair) / len(per_pair) * args.steps * args.batch
    best = {"trl": math.inf, "ours": math.inf}
    for _ in range(args.repeat):
        best["trl"] = min(best["trl"], side_trl(args, tok, rows))
        best["ours"] = min(best["ours"], side_ours(args, tok, rows))
    threads = torch.get_num_threads()
    print(f"{args.pairs} pairs, {args.steps} steps x {args.batch} pairs, LoRA r16, fp32, {threads} threads")
    print(f"{'side':<6}{'steps':>7}{'seconds':>10}{'tokens/s':>11}")
    for side, seconds in best.items():
        print(f"{side:<6}{args.steps:>7}{seconds:>10.2f}{tokens / seconds:>11.1f}")
    print(f"throughput ratio ours/trl: {best['trl'] / best['ours']:.2f}x")


if __name__ == "__main__":
    main()
