"""What the pipeline's call takes beyond its prompts: transformers' generation keywords and influence requests.

:class:`~attnlens.api.pipeline.PayAttentionPipeline` checks these here:
``num_return_sequences`` (with sampling, as transformers' text-generation
pipeline takes it), a ``streamer`` fed as transformers' ``generate`` feeds one,
and whether influence is measured (a method that exists, tags where asked).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import attribution
from ..core.errors import AttnlensError
from ..core.validate import is_int
from ..prompts.prompt import Prompt


def _check_return_sequences(n: Any, generate_kwargs: dict[str, Any]) -> int:
    """``num_return_sequences`` as transformers takes it: more than one needs sampling (or beams, unsupported)."""
    if not is_int(n) or n < 1:
        raise AttnlensError(f"num_return_sequences must be a positive integer, got {n!r}")
    if n > 1 and not generate_kwargs.get("do_sample", False):
        raise AttnlensError(
            f"num_return_sequences={n} needs do_sample=True: greedy decoding gives the same text each time"
        )
    return int(n)


def _streamer_step(streamer: Any, prompt: Prompt) -> Any:
    """The ``on_step`` that feeds ``streamer`` (a transformers ``BaseStreamer``) as transformers' ``generate`` does:
    the prompt's ids first (here, at once), then each new token."""
    import torch

    if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
        raise AttnlensError(
            f"streamer must have put() and end() (a transformers streamer such as TextStreamer); "
            f"got {type(streamer).__name__}"
        )
    streamer.put(torch.tensor([list(prompt.input_ids)]))

    def on_step(tokens: Sequence[int]) -> None:
        streamer.put(torch.tensor([int(tokens[0])]))

    return on_step


def _short(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _check_influence_request(
    prompts: Sequence[Prompt], influence: bool | None, method: str, options_given: bool
) -> bool:
    """Whether to measure influence; raises for a bad method or a requested but missing tag.

    ``influence=True`` needs a tag in every input; influence options given with
    ``influence=None`` need a tag in at least one.
    """
    if influence is not None and not isinstance(influence, bool):
        raise AttnlensError(f"influence must be True, False or None, got {influence!r}")
    if influence is False:
        return False
    if method not in attribution.methods():
        raise AttnlensError(
            f"unknown influence_method {method!r}; choose from {', '.join(attribution.methods())} "
            "(or metric='attention_rollout', pay-attention-pipeline's name)"
        )
    hint = "wrap the text to measure in <?-> ... <-?>"
    if influence:
        for i, prompt in enumerate(prompts):
            if not prompt.influence_spans():
                raise AttnlensError(f"influence was requested but input {i} has no influence tag: {hint}")
    elif options_given and not any(p.influence_spans() for p in prompts):
        raise AttnlensError(f"influence options were given but no input has an influence tag: {hint}")
    return True
