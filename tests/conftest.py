"""Test-wide settings: one torch thread (the tests' tensors are tiny; a second thread only adds overhead, and
the sweep launcher runs its agents with one thread too)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def captured_figures(monkeypatch):
    """The figures the reports draw, kept open in a list instead of saved."""
    from alphagrad_rl import report, sensitivity

    figures = []

    def keep(figure, stem):
        figures.append(figure)
        return []

    monkeypatch.setattr(report, "save_figure", keep)
    monkeypatch.setattr(sensitivity, "save_figure", keep)
    return figures
