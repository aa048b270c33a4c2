"""Peak memory and time of the LM head + cross-entropy, forward and backward: plain vs chunked (fused_head.py).

Plain is what the trainer did before: ``F.cross_entropy(F.linear(hidden, W).float(), labels)`` on the
target positions, whose logits, float copy and log-softmax all live until backward. Chunked is
fused_head.linear_cross_entropy: ``CHUNK_FLOATS`` logits at a time, the hidden-state gradient computed
while they exist. Each (variant, vocabulary) runs in its own process, so its peak memory is its own:
on CPU the peak RSS above the RSS before the step (freed memory goes back to the OS at once), on a GPU
the peak allocated memory. Every run compares both variants' loss and gradient sums (relative difference).

    python bench/bench_fused_head.py                       # vocabularies 1024, 32000, 128256 on CPU
    python bench/bench_fused_head.py --tokens 4096 --hidden 2048 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "trainer"))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def one(args: argparse.Namespace) -> dict[str, float]:
    """One variant, one vocabulary, in this process: seconds (best of --repeat) and peak memory of a step."""
    import torch
    import torch.nn.functional as F

    from kubetune_trainer.fused_head import linear_cross_entropy

    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    # Filled in place: no temporaries, so the peak before the step is the RSS before it.
    weight = torch.empty(args.vocab, args.hidden).normal_(0, 0.02, generator=gen).to(args.device)
    labels = torch.randint(0, args.vocab, (args.tokens,), generator=gen).to(args.device)
    hidden = torch.empty(args.tokens, args.hidden).normal_(generator=gen).to(args.device).requires_grad_()

    def step() -> torch.Tensor:
        hidden.grad = None
        if args.variant == "plain":
            losses = F.cross_entropy(F.linear(hidden, weight).float(), labels, reduction="none")
        else:
            losses = linear_cross_entropy(hidden, weight, None, labels)
        losses.mean().backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return losses.detach()

    on_gpu = args.device.startswith("cuda")
    before = torch.cuda.memory_allocated() / 2**20 if on_gpu else rss_mb()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        losses = step()
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else peak_rss_mb()
    assert hidden.grad is not None
    digest = {"lossSum": float(losses.double().sum()), "gradSum": float(hidden.grad.double().abs().sum())}
    return {"seconds": min(seconds), "peakMb": peak - before, **digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocabs", type=int, nargs="+", default=[1024, 32000, 128256])
    parser.add_argument("--tokens", type=int, default=1024, help="target tokens of one micro-batch")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="steps per process; the fastest is shown")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["plain", "chunked"], help=argparse.SUPPRESS)  # one process's
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(one(args)))
        return
    memory = "peak RSS MB" if args.device == "cpu" else "peak GPU MB"
    print(f"LM head + cross-entropy, {args.tokens} target tokens, hidden {args.hidden}, {args.device}, fp32")
    head = f"{'vocab':>7}{'plain s':>9}{'chunked s':>11}{'time':>7}   {memory:>13}{'chunked':>9}{'memory':>8}"
    print(f"{head}  loss/grad")
    # Every freed block goes back to the OS at once, so RSS follows the live tensors (glibc's adaptive
    # threshold otherwise keeps some freed blocks resident, and the peak RSS of one run varied 20x).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    for vocab in args.vocabs:
        same = ["--tokens", str(args.tokens), "--hidden", str(args.hidden), "--threads", str(args.threads)]
        same += ["--repeat", str(args.repeat), "--device", args.device, "--vocab", str(vocab)]
        r = {}
        for variant in ("plain", "chunked"):
            cmd = [sys.executable, __file__, "--variant", variant, *same]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if out.returncode != 0:
                sys.exit(f"{variant} failed:\n{out.stderr[-3000:]}")
            r[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        p, c = r["plain"], r["chunked"]
        time_ratio, mem_ratio = c["seconds"] / p["seconds"], c["peakMb"] / max(p["peakMb"], 1e-9)
        same_sums = max(abs(c[k] - p[k]) / max(abs(p[k]), 1e-12) for k in ("lossSum", "gradSum"))
        print(
            f"{vocab:>7}{p['seconds']:>9.3f}{c['seconds']:>11.3f}{time_ratio:>6.2f}x   "
            f"{p['peakMb']:>13.0f}{c['peakMb']:>9.0f}{mem_ratio:>7.2f}x  rel. diff {same_sums:.1e}"
        )
    print("ratios: chunked / plain (below 1: chunked is faster or smaller)")


if __name__ == "__main__":
    main()
