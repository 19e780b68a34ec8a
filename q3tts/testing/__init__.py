"""Random-weight checkpoints in the official layout, for tests and benchmarks."""
