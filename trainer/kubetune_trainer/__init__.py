"""Kubetune trainer: runs one FineTuneJob (config -> data -> model -> train -> evaluate -> export).

    python -m kubetune_trainer train SPEC.yaml [--output DIR]     # also: --spec SPEC.yaml
    python -m kubetune_trainer make-tiny-model OUT                # a local test model, no downloads
    torchrun --nproc-per-node N -m kubetune_trainer train ...     # several processes, by hand

With several GPUs visible (or spec.training.distributed.processesPerNode > 1) `train` relaunches itself
under torchrun, one process per GPU: ddp (replicas) or fsdp (sharded weights, for models that do not
fit one GPU), as spec.training.distributed.strategy says.

Environment (set by the operator's Job; all optional locally):
    KUBETUNE_FINETUNEJOB_NAME, KUBETUNE_NAMESPACE  which FineTuneJob's status to patch (in-cluster only)
    KUBETUNE_RUN                                    run number, recorded in the model card
    KUBETUNE_OUTPUT_DIR                             output location; beats spec.output.uri
    KUBETUNE_PVC_ROOT                               where pvc://claim/path is mounted (default /mnt/pvc)
    KUBETUNE_METRICS_PORT                           Prometheus port (default 9400; 0 = off)
    KUBETUNE_CACHE                                  tiny model and remote downloads (~/.cache/kubetune)
    KUBETUNE_HF_ROOT                                local copies standing in for hf://org/name
    HF_TOKEN                                        hub token for gated models / datasets

Outputs under the output directory: data/ (the splits, written once), checkpoints/step-N/, artifact/
(adapter or weights as safetensors, tokenizer, model_card.json), merged/ (optional), eval.json and
result.json; the result also goes to /dev/termination-log when the kubelet provides it.
"""

__version__ = "0.1.0"
