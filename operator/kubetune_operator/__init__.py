"""Kubetune operator: FineTuneJob -> trainer Job, ModelDeployment -> canary rollout (Kopf)."""
