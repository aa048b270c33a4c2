"""The only layer that mixes pure builders with API I/O."""
