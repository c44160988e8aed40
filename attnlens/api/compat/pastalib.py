"""pastalib's ``PASTA`` class, call for call: change ``from pastalib.pasta import PASTA`` to
``from attnlens.api.compat.pastalib import PASTA`` and the rest of the code stays.

::

    pasta = PASTA(model, tokenizer, head_config={"3": [1, 2]}, alpha=0.01, scale_position="exclude")
    inputs, offsets = pasta.inputs_from_batch(texts)
    with pasta.apply_steering(model=model, strings=texts, substrings=subs, model_input=inputs,
                              offsets_mapping=offsets) as steered:
        out = steered.generate(**inputs, max_new_tokens=64)

``model`` is a Hugging Face causal LM (wrapped in a ``TransformerBridge``
internally, any architecture the bridge supports) or a bridge. ``head_config`` is
``{layer: [heads]}`` or, as in AISteer360's PASTA, a list of layers (all their
heads). The steering is attnlens' PASTA plan (:mod:`attnlens.steering.pasta`);
the differences from pastalib (``include``, several sections) are listed in
docs/coming-from.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from ...core.errors import AttnlensError, SpanError
from ...core.model import model_device
from ...runtime.generate import generate_batch
from ...steering.bias import apply_bias
from ..pasta import PASTA as _PASTA
from .pap import _as_bridge

logger = logging.getLogger(__name__)

#: Hugging Face ``generate`` arguments that attnlens' generation takes as they are
_SAME = ("max_new_tokens", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
#: arguments a ``generate`` call may pass that change nothing here
_IGNORED = ("pad_token_id", "eos_token_id", "use_cache", "return_dict_in_generate", "output_scores")


class SteeredModel:
    """What ``apply_steering`` yields: call it like the model (``steered(**inputs).logits``) or
    ``steered.generate(**inputs, ...)``; both run steered. Other attributes are the model's."""

    def __init__(self, owner: "PASTA", model: Any, rows: list[list[int]], pads: list[int],
                 spans: list[list[tuple[int, int]]]) -> None:
        self._owner, self._model, self._rows, self._pads, self._spans = owner, model, rows, pads, spans

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def _check_inputs(self, input_ids: Any) -> torch.Tensor:
        ids = torch.as_tensor(input_ids)
        if ids.dim() != 2 or ids.shape[0] != len(self._rows):
            raise AttnlensError(
                f"the steered model was set up for the {len(self._rows)} row(s) of model_input; "
                f"got input_ids of shape {tuple(ids.shape)}"
            )
        return ids

    def __call__(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        """A steered forward pass over the padded batch; returns an object with ``.logits``."""
        from transformers.modeling_outputs import CausalLMOutput

        ids = self._check_inputs(input_ids)
        width = ids.shape[1]
        padded = [[(s + pad, e + pad) for s, e in row] for row, pad in zip(self._spans, self._pads)]
        bridge = self._owner.bridge
        plan = self._owner.steerer.plan(padded, seq_len=[width] * len(padded))
        extra = {} if attention_mask is None else {"attention_mask": torch.as_tensor(attention_mask)}
        device = model_device(bridge)
        with apply_bias(bridge, plan):
            logits = bridge(ids.to(device), **{k: v.to(device) for k, v in extra.items()})
        return CausalLMOutput(logits=logits)

    forward = __call__

    def generate(self, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> torch.Tensor:
        """Steered generation; returns ``[batch, prompt + new]`` token ids as Hugging Face's ``generate`` does
        (the prompt as given, left padding included; rows that stop early are filled with ``pad_token_id``)."""
        ids = self._check_inputs(input_ids)
        pad_id = kwargs.get("pad_token_id")
        if pad_id is None:
            tok = self._owner.tokenizer
            pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        gen = {k: kwargs.pop(k) for k in _SAME if k in kwargs}
        min_new = kwargs.pop("min_new_tokens", None)
        for k in _IGNORED:
            kwargs.pop(k, None)
        if kwargs:
            raise AttnlensError(f"unsupported generate argument(s) {', '.join(sorted(kwargs))}; "
                                f"accepted: {', '.join(_SAME + ('min_new_tokens',) + _IGNORED)}")
        if min_new is not None and min_new >= gen.get("max_new_tokens", 20):
            gen["stop_at_eos"] = False
        gen.setdefault("max_new_tokens", 20)  # Hugging Face's default length
        plan = self._owner.steerer.plan(self._spans, seq_len=[len(r) for r in self._rows])
        new = generate_batch(self._owner.bridge, self._rows, [plan], **gen)
        longest = max(len(t) for t in new)
        tail = torch.full((len(new), longest), int(pad_id), dtype=ids.dtype, device=ids.device)
        for i, t in enumerate(new):
            tail[i, : len(t)] = torch.tensor(t, dtype=ids.dtype, device=ids.device)
        return torch.cat([ids, tail], dim=1)


class PASTA:
    """pastalib's ``PASTA(model, tokenizer, head_config, alpha, scale_position)``; see the module docstring."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        head_config: Any = None,
        alpha: float = 0.01,
        scale_position: str = "exclude",
    ) -> None:
        if head_config is None:
            raise AttnlensError("head_config is required: {layer: [heads]} or a list of layers")
        self.model = model
        self.bridge = _as_bridge(model, tokenizer)
        self.tokenizer = tokenizer if tokenizer is not None else self.bridge.tokenizer
        self.steerer = _PASTA(self.bridge, head_config, alpha=alpha, scale_position=scale_position)
        self.head_config = {layer: list(heads) for layer, heads in self.steerer.head_config.items()}
        self.all_layers_idx = list(self.head_config)
        self.alpha, self.scale_position = self.steerer.alpha, self.steerer.scale_position

    def __repr__(self) -> str:
        return f"compat.{self.steerer!r}"

    @staticmethod
    def load_head_config(file: Any) -> Any:
        from ...steering.pasta import load_head_config

        return load_head_config(file)

    def inputs_from_batch(self, text: str | Sequence[str], tokenizer: Any = None, device: Any = None) -> tuple[Any, Any]:
        """Tokenize with left padding; returns ``(inputs, offsets_mapping)`` as pastalib does."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            inputs = tokenizer(text, return_tensors="pt", truncation=False, padding="longest",
                               return_offsets_mapping=True)
        finally:
            tokenizer.padding_side = side
        offsets = inputs.pop("offset_mapping")
        if device is not None:
            inputs = inputs.to(device)
        return inputs, offsets

    @contextmanager
    def apply_steering(
        self,
        model: Any = None,
        strings: Any = None,
        substrings: Any = None,
        model_input: Any = None,
        offsets_mapping: Any = None,
        occurrence: int = 0,
    ) -> Iterator[SteeredModel]:
        """Steer ``model`` towards ``substrings`` of ``strings`` inside the block; yields a :class:`SteeredModel`.

        ``substrings``: one substring per string, or a list of sections, each one substring per
        string (pastalib's layout). Positions come from ``offsets_mapping`` (left-padded input).
        """
        if model is not None and model is not self.model and model is not self.bridge:
            raise AttnlensError("apply_steering(model=...) must be the model this PASTA was built with")
        strings = [strings] if isinstance(strings, str) else list(strings or [])
        if not strings or substrings is None or model_input is None or offsets_mapping is None:
            raise AttnlensError("apply_steering needs strings, substrings, model_input and offsets_mapping")
        sections = [substrings] if isinstance(substrings, str) or isinstance(substrings[0], str) else list(substrings)
        sections = [[s] if isinstance(s, str) else list(s) for s in sections]
        ids = torch.as_tensor(model_input["input_ids"])
        mask = torch.as_tensor(model_input.get("attention_mask", torch.ones_like(ids)))
        rows, pads, spans = [], [], []
        for i, string in enumerate(strings):
            pad = int((mask[i] == 0).sum())
            rows.append(ids[i, pad:].tolist())
            pads.append(pad)
            row_spans = []
            for section in sections:
                if len(section) != len(strings):
                    raise SpanError(f"got {len(strings)} strings but {len(section)} substrings in a section")
                row_spans.append(_token_range(string, section[i], offsets_mapping[i][pad:], occurrence))
            spans.append(row_spans)
        yield SteeredModel(self, self.model, rows, pads, spans)


def _token_range(string: str, substring: str, offsets: Any, occurrence: int) -> tuple[int, int]:
    """The tokens (unpadded positions) whose characters overlap ``substring``'s ``occurrence``-th match."""
    start = -1
    for _ in range(occurrence + 1):
        start = string.find(substring, start + 1)
        if start < 0:
            raise SpanError(f"substring {substring!r} (occurrence {occurrence}) not found in {string!r:.80}")
    end = start + len(substring)
    hits = [t for t, (s, e) in enumerate(torch.as_tensor(offsets).tolist()) if e > s and s < end and e > start]
    if not hits:
        raise SpanError(f"substring {substring!r} covers no token")
    return hits[0], hits[-1] + 1
