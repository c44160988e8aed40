"""Scorers for head profiling: ``scorer(logits, target) -> score per row``, higher is better."""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float, Int

from ..core.errors import AttnlensError

#: ``scorer(logits, target) -> score per row``: ``logits`` ``[rows, n_target, vocab]`` predict
#: the target tokens ``target`` ``[n_target]``; higher scores are better.
Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def mean_logprob(
    logits: Float[torch.Tensor, "rows n_target vocab"], target: Int[torch.Tensor, "n_target"]  # noqa: F821
) -> Float[torch.Tensor, "rows"]:  # noqa: F821
    """The mean log-probability of the target tokens (the default scorer)."""
    return _target_logprobs(logits, target).mean(-1)


def sum_logprob(
    logits: Float[torch.Tensor, "rows n_target vocab"], target: Int[torch.Tensor, "n_target"]  # noqa: F821
) -> Float[torch.Tensor, "rows"]:  # noqa: F821
    """The log-probability of the whole target completion."""
    return _target_logprobs(logits, target).sum(-1)


def token_accuracy(
    logits: Float[torch.Tensor, "rows n_target vocab"], target: Int[torch.Tensor, "n_target"]  # noqa: F821
) -> Float[torch.Tensor, "rows"]:  # noqa: F821
    """The share of target tokens that greedy decoding would pick (teacher-forced)."""
    return (logits.argmax(-1) == target.to(logits.device)).float().mean(-1)


def first_token_logprob(
    logits: Float[torch.Tensor, "rows n_target vocab"], target: Int[torch.Tensor, "n_target"]  # noqa: F821
) -> Float[torch.Tensor, "rows"]:  # noqa: F821
    """The log-probability of the target's first token (say, ``{`` for a JSON answer)."""
    return _target_logprobs(logits[:, :1], target[:1]).squeeze(-1)


def _target_logprobs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    logprobs = logits.float().log_softmax(-1)
    index = target.to(logits.device).view(1, -1, 1).expand(logits.shape[0], -1, 1)
    return logprobs.gather(-1, index).squeeze(-1)


SCORERS: dict[str, Scorer] = {
    "mean_logprob": mean_logprob,
    "sum_logprob": sum_logprob,
    "token_accuracy": token_accuracy,
    "first_token_logprob": first_token_logprob,
}


def _resolve_scorer(scorer: str | Scorer) -> tuple[str, Scorer]:
    if isinstance(scorer, str):
        try:
            return scorer, SCORERS[scorer]
        except KeyError:
            raise AttnlensError(f"unknown scorer {scorer!r}; built in: {', '.join(SCORERS)}") from None
    if not callable(scorer):
        raise AttnlensError(f"scorer must be a name ({', '.join(SCORERS)}) or a callable, got {scorer!r}")
    return getattr(scorer, "__name__", type(scorer).__name__), scorer
