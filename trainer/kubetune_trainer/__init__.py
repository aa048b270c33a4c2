"""Kubetune trainer: runs one FineTuneJob (config -> data -> model -> train -> evaluate -> export).

    python -m kubetune_trainer train SPEC.yaml [--output DIR]     # also: --spec SPEC.yaml
    python -m kubetune_trainer make-tiny-model OUT                # a local test model, no downloads
    torchrun --nproc-per-node N -m kubetune_trainer train ...     # several processes, by hand

With several GPUs visible (or spec.training.distributed.processesPerNode > 1) `train` relaunches itself
under torchrun, one process per GPU: ddp (replicas) or fsdp (sharded weights, for models that do not
fit one GPU), as spec.training.distributed.strategy says.

The run itself is `recipe.run` (setup -> data -> model -> train -> evaluate -> export); `cli` parses
the arguments. The environment the operator's Job sets is listed, and read once, in `environment`.

Outputs under the output directory: data/ (the splits, written once), checkpoints/step-N/, artifact/
(adapter or weights as safetensors, tokenizer, model_card.json), merged/ (optional), eval.json and
result.json; the result also goes to /dev/termination-log when the kubelet provides it.
"""

__version__ = "0.1.0"
