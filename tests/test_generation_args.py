"""Generation arguments at their edges: a sampling temperature too small to sample with is refused by name."""

from __future__ import annotations

import pytest

import attnlens as al
from attnlens.runtime.generate import MIN_TEMPERATURE, generate_batch


@pytest.mark.parametrize("temperature", [1e-300, 1e-5, MIN_TEMPERATURE / 2])
def test_a_tiny_sampling_temperature_is_refused(tiny, temperature):
    with pytest.raises(al.AttnlensError, match="temperature .* too small"):
        generate_batch(tiny, [[1, 2, 3]], do_sample=True, temperature=temperature, max_new_tokens=2)


def test_the_smallest_temperature_samples_and_greedy_ignores_it(tiny):
    assert len(generate_batch(tiny, [[1, 2, 3]], do_sample=True, temperature=MIN_TEMPERATURE, seed=0,
                              max_new_tokens=3, stop_at_eos=False)[0]) == 3
    greedy = generate_batch(tiny, [[1, 2, 3]], temperature=1e-300, max_new_tokens=3, stop_at_eos=False)[0]
    assert greedy == generate_batch(tiny, [[1, 2, 3]], max_new_tokens=3, stop_at_eos=False)[0]
