"""Profiling picks its torch threads: the cores other work leaves free by default, exactly what is asked
otherwise, and torch's own setting is restored afterwards."""

from __future__ import annotations

import os

import pytest
import torch

from attnlens import AttnlensError
from attnlens.api import profile
from attnlens.api.profile import default_threads, profile_heads
from conftest import make_tiny_bridge

EXAMPLE = {"prompt": "Mary is a doctor. Answer in JSON.", "emphasize": "Answer in JSON", "target": " {"}


@pytest.fixture
def cpus(monkeypatch):
    """Four usable CPUs, torch allowed four threads, no OMP_NUM_THREADS; returns a load setter."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)

    def load(value):
        monkeypatch.setattr(os, "getloadavg", lambda: (value, value, value))

    return load


@pytest.mark.parametrize("load, threads", [(0.0, 4), (1.0, 4), (2.0, 3), (3.4, 2), (4.6, 1), (12.0, 1)])
def test_default_threads_are_the_free_cores(cpus, load, threads):
    cpus(load)  # one runnable task is the profiling process itself
    assert default_threads() == threads


def test_omp_num_threads_overrides_the_rule(cpus, monkeypatch):
    cpus(12.0)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert default_threads() == 4


def test_profile_runs_with_the_chosen_threads_and_restores_torch(tokenizer, monkeypatch):
    model = make_tiny_bridge(tokenizer)
    seen = []

    def scorer(logits, target):
        seen.append(torch.get_num_threads())
        return logits[:, 0, 0]

    before = torch.get_num_threads()
    profile_heads(model, [EXAMPLE], heads={0: [0]}, scorer=scorer, threads=1, progress=False)
    assert set(seen) == {1} and torch.get_num_threads() == before
    seen.clear()
    monkeypatch.setattr(profile, "default_threads", lambda: 1)
    profile_heads(model, [EXAMPLE], heads={0: [0]}, scorer=scorer, progress=False)
    assert set(seen) == {1} and torch.get_num_threads() == before
    with pytest.raises(AttnlensError, match="threads must be a positive integer"):
        profile_heads(model, [EXAMPLE], threads=0, progress=False)
