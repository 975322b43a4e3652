"""Test-wide settings: one torch thread (the tests' tensors are tiny; a second thread only adds overhead, and
the sweep launcher runs its agents with one thread too)."""

import torch

torch.set_num_threads(1)
