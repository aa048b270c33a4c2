"""Throughput of our trainer vs. plain HF Trainer + PEFT LoRA with pad-to-longest batches.

Both train the same tiny model with the same LoRA config on the same long-tailed instruction data for
one epoch (``--epochs``), each in its own process so peak RSS is its own. Two data shapes (``--shapes``):

- ``lognormal``: response lengths log-normal (median 25 words, ``--sigma``), as real instruction sets are;
- ``heavy``: a heavier tail, many short rows (85 %, median 8 words) plus some near the maximum length
  (15 %, 220-400 words, so most are cut at ``--max-len`` tokens).

Reported per side: non-padding tokens per second, peak RSS, and validation loss after the same tokens.
Optimizer steps are matched by the trainer itself: both sides run batchSize 8, so both take
ceil(examples / 8) steps per epoch; ours lays each step's examples out as one padding-free row (see
packing.py and packed_attention.py). The default length (8000 rows) runs HF for a minute or more per
shape on one thread, so warm-up is a small share as in a real job; ``--smoke`` is a tiny run for tests.
``--threads N`` sets torch's intra-op threads on both sides alike (default: torch's own choice);
``--repeat N`` runs each side N times, alternating, and shows each side's best (shared machines are noisy).
``--seed`` changes adapter init and batch order on both sides; ``--scheduler`` the LR schedule of both.
``--devices``: CPU, and the GPU as well when one is present (HF pads on it as the plain recipe does; ours
uses flash-attn's varlen kernel there when installed, else per-example sdpa); on a GPU the memory column
is peak allocated GPU memory instead of RSS.

    python bench/bench_trainer.py --threads 1 --repeat 2          # both shapes: tables, ratios, loss deltas
    python bench/bench_trainer.py --shapes lognormal --sigma 1.5  # one shape
    python bench/bench_trainer.py --side ours --shapes heavy      # one side, prints one JSON line
    python bench/bench_trainer.py --devices cuda --precision bf16 # the GPU path only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HF_BATCH = 8  # examples per step, both sides
SHAPES = ("lognormal", "heavy")
sys.path.insert(0, str(REPO / "trainer"))


def response_words(shape: str, sigma: float, rng: random.Random) -> int:
    """Words in one response: log-normal (median 25), or the heavy tail's short rows and near-maximum ones."""
    if shape == "heavy":
        if rng.random() < 0.15:
            return rng.randint(220, 400)
        return min(400, max(2, int(rng.lognormvariate(math.log(8), 0.5))))
    return min(400, max(3, int(rng.lognormvariate(math.log(25), sigma))))


def long_tail_rows(n: int, shape: str = "lognormal", sigma: float = 1.0, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, response) pairs of ``shape`` (see the module docstring), capped at 400 words."""
    words = (REPO / "examples" / "data" / "general.txt").read_text().split()
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = response_words(shape, sigma, rng)
        start = rng.randrange(len(words))
        response = " ".join(words[(start + j) % len(words)] for j in range(length))
        rows.append((f"### Instruction:\nContinue note {i}.\n\n### Response:\n", response))
    return rows


def tokenized(args: argparse.Namespace, tok: Any) -> tuple[list[dict], list[dict]]:
    from kubetune_trainer.packing import tokenize_pair

    pairs = long_tail_rows(args.rows, args.shape, args.sigma)  # the same data whatever --seed
    examples = [tokenize_pair(p, r, tok, args.max_len) for p, r in pairs]
    examples = [e for e in examples if e is not None]
    n_val = max(1, len(examples) // 10)
    return examples[n_val:], examples[:n_val]


def load(args: argparse.Namespace, attention: str = "sdpa"):
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.tiny_model import ensure_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)

    path = ensure_tiny_model(Path(args.model) if args.model else None)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention)
    torch.manual_seed(args.seed)
    lora = peft.LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
    return tok, peft.get_peft_model(model, lora).to(args.device)


def side_hf(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainingArguments

    tok, model = load(args)
    train, val = tokenized(args, tok)
    # HF models shift labels themselves, so un-shift ours: same target tokens on both sides.
    data = [{"input_ids": e["input_ids"], "labels": [-100, *e["labels"][:-1]]} for e in train]

    padded = [0]  # token positions HF computes, padding included

    def pad_to_longest(batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(b["input_ids"]) for b in batch)
        padded[0] += width * len(batch)
        pad = lambda xs, v: xs + [v] * (width - len(xs))  # noqa: E731
        return {
            "input_ids": torch.tensor([pad(b["input_ids"], tok.pad_token_id) for b in batch]),
            "labels": torch.tensor([pad(b["labels"], -100) for b in batch]),
            "attention_mask": torch.tensor([pad([1] * len(b["input_ids"]), 0) for b in batch]),
        }

    targs = TrainingArguments(
        output_dir=str(Path(args.workdir) / "hf"),
        per_device_train_batch_size=HF_BATCH,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type=args.scheduler,
        logging_steps=10_000,
        save_strategy="no",
        report_to="none",
        use_cpu=args.device == "cpu",
        remove_unused_columns=False,
        disable_tqdm=True,
        bf16=args.precision == "bf16",
        seed=args.seed,
    )
    trainer = Trainer(model=model, args=targs, train_dataset=data, data_collator=pad_to_longest)
    start = time.perf_counter()
    trainer.train()
    sync(args.device)
    seconds = time.perf_counter() - start
    tokens = args.epochs * sum(len(e["input_ids"]) for e in train)
    result = finish(args, model, tok, val, tokens, seconds, trainer.state.global_step)
    return {**result, "paddedTokens": padded[0]}


def side_ours(args: argparse.Namespace) -> dict[str, Any]:
    from kubetune_trainer.config import TrainingConfig
    from kubetune_trainer.model import attn_implementation
    from kubetune_trainer.train import resolve_precision, train

    tok, model = load(args, attn_implementation(args.device))  # the trainer's choice: flash-attn on CUDA if there
    train_ex, val = tokenized(args, tok)
    cfg = TrainingConfig(
        epochs=args.epochs,
        learning_rate=args.lr,
        scheduler=args.scheduler,
        warmup_ratio=0.0,
        batch_size=HF_BATCH,  # examples per step, as HF's per_device_train_batch_size
        max_seq_length=args.max_len,
        precision=args.precision,
        eval_steps=10_000,
        logging_steps=10_000,
        checkpoint_steps=10_000,
        seed=args.seed,
    )
    dtype, out = resolve_precision(cfg.precision, args.device), Path(args.workdir) / "ours"
    start = time.perf_counter()
    varlen = True  # one padding-free row per micro-batch (flash varlen on GPU, per-example sdpa on CPU)
    result = train(
        model,
        train_ex,
        [],
        cfg,
        pad_id=tok.pad_token_id,
        device=args.device,
        dtype=dtype,
        output_dir=out,
        varlen=varlen,
    )
    sync(args.device)
    seconds = time.perf_counter() - start
    tokens = args.epochs * sum(len(e["input_ids"]) for e in train_ex)
    return finish(args, model, tok, val, tokens, seconds, result.steps)


def sync(device: str) -> None:
    """Wait for queued GPU work, so the clock stops when training has really finished."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def finish(args, model, tok, val, tokens: int, seconds: float, steps: int) -> dict[str, Any]:
    import torch

    from kubetune_trainer.loss import mean_loss
    from kubetune_trainer.train import autocast_factory, resolve_precision

    on_gpu = args.device.startswith("cuda")
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None  # training's, before eval
    autocast = autocast_factory(args.device, resolve_precision(args.precision, args.device))
    eval_loss = mean_loss(model, val, 8, tok.pad_token_id, args.device, autocast)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return {
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokensPerSecond": round(tokens / seconds, 1),
        "steps": steps,
        "evalLoss": round(eval_loss, 4),
        "peakRssMb": round(rss_mb, 1),
        "peakMemoryMb": round(peak_gpu_mb if peak_gpu_mb is not None else rss_mb, 1),
        "threads": torch.get_num_threads(),
        "loadAverage": round(os.getloadavg()[0], 2),  # a shared machine: how busy it was at the end
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["hf", "ours", "both"], default="both")
    parser.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), help="data shapes to compare")
    parser.add_argument("--rows", type=int, default=8000, help="rows generated (10 %% of them validation)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="40 rows: that it runs, not how fast (tests)")
    parser.add_argument("--sigma", type=float, default=1.0, help="log-normal sigma of the lognormal shape")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, help="torch intra-op threads, both sides (default: torch's)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per side (alternating); the best is shown")
    parser.add_argument(
        "--scheduler", choices=["constant", "linear", "cosine"], default="constant", help="LR schedule, both sides"
    )
    parser.add_argument("--seed", type=int, default=0, help="adapter init and batch order, both sides")
    parser.add_argument(
        "--devices", nargs="+", choices=["cpu", "cuda"], help="where to run (default: cpu, and cuda when present)"
    )
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)  # one side's device (subprocesses)
    parser.add_argument("--model", help="tiny model dir (default: the cached one)")
    parser.add_argument("--workdir", default="/tmp/kubetune-bench")
    args = parser.parse_args()
    if args.smoke:
        args.rows = 40
    if args.side != "both":
        if len(args.shapes) != 1:
            sys.exit("--side hf/ours takes one --shapes")
        args.shape = args.shapes[0]
        print(json.dumps((side_hf if args.side == "hf" else side_ours)(args)))
        return
    for device in args.devices or default_devices():
        for shape in args.shapes:
            compare(args, shape, device)


def default_devices() -> list[str]:
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def compare(args: argparse.Namespace, shape: str, device: str) -> None:
    """Both sides on one data shape, each in its own process; print the table, the ratio and the loss delta."""
    same = ["--rows", str(args.rows), "--epochs", str(args.epochs), "--max-len", str(args.max_len), "--device", device]
    same += ["--lr", str(args.lr), "--seed", str(args.seed), "--sigma", str(args.sigma), "--precision", args.precision]
    same += ["--scheduler", args.scheduler, "--workdir", args.workdir]
    same += ["--threads", str(args.threads)] if args.threads else []
    same += ["--model", args.model] if args.model else []
    runs: dict[str, list[dict[str, Any]]] = {"hf": [], "ours": []}
    for _ in range(args.repeat):  # alternate the sides, so a burst of load on a shared machine hits both
        for side in runs:
            cmd = [sys.executable, __file__, "--side", side, "--shapes", shape, *same]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                sys.exit(f"{side} failed:\n{out.stderr[-3000:]}")
            runs[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
    results = {side: max(rs, key=lambda r: r["tokensPerSecond"]) for side, rs in runs.items()}
    what = f"log-normal, sigma {args.sigma}" if shape == "lognormal" else "heavy tail (85 % short, 15 % near max)"
    print(f"== {shape}: {what}, {args.rows} rows, {args.epochs} epoch(s), {device}, {args.precision}")
    memory = "peakRSS MB" if device == "cpu" else "peakGPU MB"
    head = f"{'':6}{'tokens/s':>10}{'seconds':>9}{'steps':>7}{'evalLoss':>10}{memory:>12}{'threads':>9}"
    print(f"{head}  every run's tokens/s (load average)")
    for side, r in results.items():
        row = (r["tokensPerSecond"], r["seconds"], r["steps"], r["evalLoss"], r["peakMemoryMb"], r["threads"])
        every = " ".join(f"{x['tokensPerSecond']:.0f} ({x['loadAverage']:.1f})" for x in runs[side])
        print(f"{side:6}{row[0]:>10.0f}{row[1]:>9.1f}{row[2]:>7}{row[3]:>10.4f}{row[4]:>12.0f}{row[5]:>9}  {every}")
    ratio = results["ours"]["tokensPerSecond"] / results["hf"]["tokensPerSecond"]
    best = f"best of {args.repeat} runs per side, " if args.repeat > 1 else ""
    print(f"throughput ratio ours/hf: {ratio:.2f}x ({best}non-padding tokens/s, {results['hf']['tokens']} tokens each)")
    delta = results["ours"]["evalLoss"] - results["hf"]["evalLoss"]
    print(f"eval loss ours - hf: {delta:+.4f} (negative: ours is better)")
    peak = results["ours"]["peakMemoryMb"] / results["hf"]["peakMemoryMb"]
    print(f"peak {'RSS' if device == 'cpu' else 'GPU memory'} ours/hf: {peak:.2f}x")
    # Padding-free work saves at most this factor on per-token layers (attention and the LM head on prompt
    # tokens can save more): the yardstick for how far the ratio can go on this length distribution.
    pad_factor = results["hf"]["paddedTokens"] / results["hf"]["tokens"]
    print(f"hf pad-to-longest computed {pad_factor:.2f} token positions per real token\n")


if __name__ == "__main__":
    main()
