"""Optimizers for the benchmark's protocol tests (tests/test_benchmark.py), given to it as custom factories."""

import torch


def adam_alias(params, lr):
    """torch.optim.Adam under another name: the benchmark must score it as it scores its reference, Adam."""
    return torch.optim.Adam(params, lr=lr)


def frozen(params, lr):
    """An optimizer that never moves the parameters (whatever lr it is given): its agent keeps its initial policy."""
    return torch.optim.SGD(params, lr=0.0)
