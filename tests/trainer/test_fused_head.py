"""The chunked LM head + cross-entropy (fused_head.py) computes what the plain projection and loss compute."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kubetune_trainer import fused_head, loss
from kubetune_trainer.packing import collate, tokenize_pair

REPO = Path(__file__).resolve().parents[2]


def plain_and_chunked(hidden, weight, bias, labels, upstream):
    """(losses, gradients) of the plain loss and of linear_cross_entropy, each weighted by ``upstream``."""
    inputs = [t for t in (hidden, weight, bias) if t is not None and t.requires_grad]
    plain = F.cross_entropy(F.linear(hidden, weight, bias).float(), labels, reduction="none")
    chunked = fused_head.linear_cross_entropy(hidden, weight, bias, labels)
    return [(out.detach(), torch.autograd.grad((out * upstream).sum(), inputs)) for out in (plain, chunked)]


@pytest.mark.parametrize("trainable_head", [False, True])
def test_chunks_give_the_plain_losses_and_gradients(monkeypatch, trainable_head):
    monkeypatch.setattr(fused_head, "CHUNK_FLOATS", 50 * 5)  # five rows a chunk: 37 rows make 8 chunks
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 8, generator=gen, requires_grad=True)
    weight = torch.randn(50, 8, generator=gen, requires_grad=trainable_head)
    bias = torch.randn(50, generator=gen, requires_grad=trainable_head)
    labels = torch.randint(0, 50, (37,), generator=gen)
    upstream = torch.rand(37, generator=gen)  # per-token weights, as DPO's per-sequence sums give
    (plain, plain_grads), (chunked, chunked_grads) = plain_and_chunked(hidden, weight, bias, labels, upstream)
    torch.testing.assert_close(chunked, plain)
    assert len(chunked_grads) == (3 if trainable_head else 1)
    for ours, theirs in zip(chunked_grads, plain_grads, strict=True):
        torch.testing.assert_close(ours, theirs)


def test_without_gradients_and_without_targets():
    hidden, weight, labels = torch.randn(6, 4), torch.randn(9, 4), torch.tensor([0, 8, 3, 3, 1, 2])
    with torch.no_grad():
        got = fused_head.linear_cross_entropy(hidden, weight, None, labels)
    torch.testing.assert_close(got, F.cross_entropy(hidden @ weight.t(), labels, reduction="none"))
    empty = fused_head.linear_cross_entropy(torch.randn(0, 4, requires_grad=True), weight, None, labels[:0])
    assert empty.shape == (0,) and empty.dtype == torch.float32


def test_a_label_far_below_the_largest_logit_keeps_its_finite_loss():
    # Its probability underflows to 0 in fp32 (exp(-300)), so -log(softmax[label]) would be inf; the loss is
    # taken from the log-sum-exp instead, and its gradient is still softmax - onehot.
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    weight = torch.tensor([[300.0, 0.0], [0.0, 0.0], [0.0, -5.0]])
    labels = torch.tensor([1, 2])
    (plain, plain_grads), (chunked, chunked_grads) = plain_and_chunked(hidden, weight, None, labels, torch.ones(2))
    assert torch.isfinite(chunked).all() and chunked[0].item() == pytest.approx(300.0)
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(chunked_grads[0], plain_grads[0])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [tokenize_pair("### Instruction:\nq\n\n### Response:\n", "an answer " * n, tok, 64) for n in (1, 4, 9)]
    return tok, collate(rows, tok.pad_token_id), lambda: AutoModelForCausalLM.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_trainer_loss_is_unchanged_on_a_real_model(tiny, monkeypatch, method):
    import peft

    _, batch, load = tiny
    model = load()
    if method == "lora":
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    assert fused_head.plain_head(model) is model.get_output_embeddings()

    def losses_and_grads():
        model.zero_grad()
        out = loss.token_losses(model, batch)
        (out * torch.linspace(0.5, 2.0, out.numel())).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    chunked, chunked_grads = losses_and_grads()
    monkeypatch.setattr(fused_head, "plain_head", lambda model: None)  # the plain projection and loss
    plain, plain_grads = losses_and_grads()
    torch.testing.assert_close(chunked, plain)
    assert chunked_grads.keys() == plain_grads.keys() and ("lm_head.weight" in plain_grads) == (method == "full")
    for name, grad in plain_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, msg=name)


def test_heads_that_transform_their_logits_keep_the_plain_path(tiny):
    _, _, load = tiny
    model = load()
    model.config.model_type = "granite"  # its forward divides the logits: the projection is not all
    assert fused_head.plain_head(model) is None
    model.config.model_type = "llama"
    model.lm_head = torch.nn.Sequential(model.lm_head)  # not a plain Linear (e.g. peft's modules_to_save)
    assert fused_head.plain_head(model) is None


@pytest.mark.slow
def test_bench_prints_both_ratios():
    cmd = [sys.executable, str(REPO / "bench" / "bench_fused_head.py"), "--vocabs", "512", "4096"]
    out = subprocess.run([*cmd, "--tokens", "64", "--hidden", "16"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    row = r"^\s+(\d+)\s+[\d.]+\s+[\d.]+\s+(\d+\.\d+)x\s+\d+\s+\d+\s+(\d+\.\d+)x\s+rel\. diff (\S+)$"
    rows = re.findall(row, out.stdout, re.M)
    assert [r[0] for r in rows] == ["512", "4096"], out.stdout
    assert all(float(r[3]) < 1e-5 for r in rows), out.stdout  # both variants computed the same loss and gradient
