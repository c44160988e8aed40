"""PASTA as a convenience class: a head configuration, then ``locate``, ``plan``, ``steer`` and ``generate``.

The plan comes from :func:`attnlens.steering.pasta.pasta_plan`; generation goes
through :func:`attnlens.api.chain.generate`, the chain every caller shares.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..core.model import Model
from ..core.errors import AttnlensError, SpanError
from ..core.model import model_shape
from ..core.validate import is_int
from ..prompts.prompt import Prompt, SubstringLike, is_chat, locate_substrings
from ..steering.bias import BiasPlan, apply_bias
from . import chain
from ..steering.pasta import (
    HeadConfig,
    HeadConfigLike,
    check_alpha,
    check_scale_position,
    count_heads,
    normalize_head_config,
    pasta_plan,
)

logger = logging.getLogger(__name__)


class PASTA:
    """Steer a model's chosen heads towards user-given substrings.

    Example::

        steerer = attnlens.PASTA(model, head_config={"3": [1, 2], "5": [0, 4]}, alpha=0.01)
        steerer.generate(text, substrings=["Answer ... as json format"], max_new_tokens=64)

    Args:
        model: a TransformerBridge with a tokenizer (``attnlens.load_model()``).
        head_config: ``{layer: [heads]}`` (int or str keys), a list of layers (all
            their heads), or the path of a pastalib-format JSON file.
        alpha: the scaling coefficient (``exclude``: in (0, 1]).
        scale_position: ``"exclude"`` (scale the rest of the prompt by ``alpha``)
            or ``"include"`` (scale the spans by ``1/alpha``).
    """

    def __init__(
        self,
        model: Model,
        head_config: HeadConfigLike,
        alpha: float = 0.01,
        scale_position: str = "exclude",
    ) -> None:
        self.model = model
        self.scale_position = check_scale_position(scale_position)
        self.alpha = check_alpha(alpha, self.scale_position)
        n_layers, n_heads = model_shape(model)
        self.head_config: HeadConfig = normalize_head_config(head_config, n_layers, n_heads)

    def __repr__(self) -> str:
        return (
            f"PASTA({count_heads(self.head_config)} heads in {len(self.head_config)} layers, "
            f"alpha={self.alpha}, scale_position={self.scale_position!r})"
        )

    @property
    def tokenizer(self) -> Any:
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:
            raise AttnlensError("the model has no tokenizer; PASTA needs one to locate substrings")
        return tokenizer

    def locate(
        self,
        prompt: str | Sequence[Mapping[str, str]],
        substrings: SubstringLike | Sequence[SubstringLike],
        *,
        occurrence: int | None = 0,
        chat: bool = False,
    ) -> Prompt:
        """The prompt's tokens and the token spans of ``substrings``; see :func:`~attnlens.prompts.prompt.locate_substrings`."""
        return locate_substrings(self.tokenizer, prompt, substrings, occurrence=occurrence, chat=chat)

    def plan(self, spans: Any, seq_len: int | Sequence[int] | None = None) -> BiasPlan:
        """This steerer's :func:`pasta_plan` for token ``spans``."""
        return pasta_plan(self.model, spans, self.head_config, self.alpha, self.scale_position, seq_len)

    @contextmanager
    def steer(self, spans: Any, seq_len: int | Sequence[int] | None = None) -> Iterator[BiasPlan]:
        """Context manager: steer every forward inside the block towards token ``spans``."""
        with apply_bias(self.model, self.plan(spans, seq_len)) as plan:
            yield plan

    def generate(
        self,
        prompts: Any,
        substrings: Any,
        *,
        occurrence: int | None = 0,
        chat: bool = False,
        plans: Sequence[BiasPlan] = (),
        batch_size: int = 8,
        **generate_kwargs: Any,
    ) -> str | list[str]:
        """Generate with the substrings emphasised; returns the new text (a list for a list of prompts).

        Args:
            prompts: a string, a chat (list of ``{"role", "content"}``), or a list of either.
            substrings: for one prompt, a substring or a list of them (several sections); for a
                list of prompts, one such entry per prompt. A substring may be
                ``(substring, occurrence)``.
            occurrence: which occurrence of each substring (0-based; ``None``: all).
            chat: send plain strings through the chat template as user messages.
            plans: further bias plans (say, GUIDE's) in unpadded positions, added to PASTA's; their
                per-row terms index the prompts.
            batch_size: prompts generated together (left padding; per-row spans).
            **generate_kwargs: ``max_new_tokens``, ``do_sample``, ``temperature``, ...
        """

        single = isinstance(prompts, str) or is_chat(prompts)
        items = [prompts] if single else list(prompts)
        if not items:
            raise AttnlensError("no prompts given")
        if single:
            subs = [substrings]
        else:
            if isinstance(substrings, str) or not isinstance(substrings, Sequence) or len(substrings) != len(items):
                raise SpanError(
                    f"give one entry of substrings per prompt: {len(items)} prompt(s), "
                    f"got {substrings!r:.80}"
                )
            subs = list(substrings)
        if not is_int(batch_size) or batch_size < 1:
            raise AttnlensError(f"batch_size must be a positive integer, got {batch_size!r}")
        located = [self.locate(p, s, occurrence=occurrence, chat=chat) for p, s in zip(items, subs)]
        plan = self.plan([list(p.spans) for p in located], seq_len=[len(p) for p in located])
        logger.debug("PASTA: generating %d prompt(s), spans %s", len(located), [p.spans for p in located])
        new = chain.generate(self.model, located, [plan, *plans], batch_size=batch_size, desc="PASTA generate",
                             **generate_kwargs)
        outputs = [self.tokenizer.decode(t, skip_special_tokens=True) for t in new]
        return outputs[0] if single else outputs

