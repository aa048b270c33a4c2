"""Kubetune trainer: runs one FineTuneJob (config -> data -> model -> train -> evaluate -> export)."""

__version__ = "0.1.0"
