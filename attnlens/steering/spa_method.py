"""Selective Prompt Anchoring (SPA) as a registered steering method: a contrast of logits, step by step.

SPA (Tian and Zhang, 2024, "Selective Prompt Anchoring for Code Generation",
arXiv:2408.09121) leaves attention alone. At every decoding step it runs the
prompt twice: as it is (``E``) and with the anchored text masked (``E_mask``:
the anchored tokens' embeddings replaced by a mask embedding, positions kept),
and mixes the two next-token logits with the anchoring weight ``omega``::

    logits = omega * f(E) + (1 - omega) * f(E_mask)
           = f(E_mask) + omega * (f(E) - f(E_mask))

``omega = 1`` is plain generation; ``omega > 1`` amplifies what the anchored
text contributes. Here the mask embedding is the embedding of a mask token
(``mask_token``; default: the tokenizer's padding token), put in place of each
anchored token.

Both passes run as one batch: the rows ``[original; masked]`` go through one
forward pass per step (with the KV cache on the direct runtime; the bridge
recomputes the whole sequence each step), so the cost is about two forwards
per step. The method is a step of generation: it runs the decoding loop
(:meth:`SpaSteering.bind`) and does nothing to a single forward pass (an
influence measurement under SPA is the unsteered one).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

from ..core.errors import AttnlensError
from .kinds import DecodingOverride
from .registry import Param, SteeringMethod, register

logger = logging.getLogger(__name__)


#: SPA's decoding loop drops a row that has ended (its end token) from the batch and its cache; False keeps
#: every row to the last step, as before (``benchmarks/bench_compare.py`` times the old way with it)
DROP_ENDED_ROWS = True


def _omega(value: Any) -> float:
    if isinstance(value, bool):
        raise AttnlensError(f"spa: omega must be a finite number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise AttnlensError(f"spa: omega must be a finite number, got {value!r}") from None
    if not math.isfinite(out):
        raise AttnlensError(f"spa: omega must be a finite number, got {value!r}")
    return out


def _token(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not float(value).is_integer() or int(value) < 0:
        raise AttnlensError(f"spa: mask_token must be a token id (a non-negative integer), got {value!r}")
    return int(value)


def mix(original: Any, masked: Any, omega: float) -> Any:
    """SPA's mixed logits: ``omega * original + (1 - omega) * masked``."""
    return omega * original + (1.0 - omega) * masked


def masked_rows(tokens: Any, spans: Sequence[Sequence[tuple[int, int]]], mask_token: int) -> Any:
    """``tokens`` (``[rows, pos]``) with every anchored position replaced by ``mask_token``."""
    out = tokens.clone()
    for r, row in enumerate(spans):
        for s, e in row:
            out[r, s:e] = mask_token
    return out


def _choose(logits: Any, *, do_sample: bool, temperature: float, top_p: float | None, top_k: int | None) -> Any:
    import torch

    if not do_sample:
        return logits.argmax(-1)
    scores = logits / temperature
    if top_k:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        ordered, index = torch.sort(scores, descending=True, dim=-1)
        cum = ordered.softmax(-1).cumsum(-1)
        drop = cum - ordered.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        ordered = ordered.masked_fill(drop, -math.inf)
        scores = torch.full_like(scores, -math.inf).scatter(-1, index, ordered)
    return torch.multinomial(scores.softmax(-1), 1)[:, 0]


@dataclass(frozen=True)
class SpaSteering(DecodingOverride):
    """SPA for one batch: the anchored spans per row (padded positions), ``omega`` and the mask token (a
    :class:`DecodingOverride`)."""

    spans: tuple[tuple[tuple[int, int], ...], ...]
    omega: float
    mask_token: int
    name: str = "spa"

    @property
    def rows(self) -> int:
        return len(self.spans)

    def shifted(self, offsets: Sequence[int]) -> "SpaSteering":
        if len(offsets) != len(self.spans):
            raise AttnlensError(f"the spa steering has spans for {len(self.spans)} rows; the batch has {len(offsets)}")
        return replace(self, spans=tuple(tuple((s + o, e + o) for s, e in row) for row, o in zip(self.spans, offsets)))

    def select_rows(self, start: int, count: int) -> "SpaSteering":
        return replace(self, spans=self.spans[start : start + count])

    def install(self, model: Any) -> Any:
        return nullcontext(self)  # nothing changes inside a forward pass

    def bind(self, run: Any) -> "_SpaRun":
        return _SpaRun(self, run)


def out_keys(run: "_SpaRun") -> tuple[str, ...]:
    return getattr(run, "_keys", ())


class _SpaRun:
    """A run whose ``generate`` mixes the logits of the original and the masked rows at every step."""

    def __init__(self, steering: SpaSteering, run: Any) -> None:
        self.steering = steering
        self.run = run
        self.name = run.name
        #: the mixed logits of every step of the last generation (``[rows, vocab]`` each; NaN in a row that has ended)
        self.mixed: list[Any] = []

    def step_logits(self, x: Any, mask: Any, past: Any) -> tuple[Any, Any]:
        """The last position's logits of every row (and the cache): KV-cached on the direct runtime."""
        hf = getattr(self.run, "hf", None)
        if hf is None:
            return self.run.forward(x, mask)[:, -1], None
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        if past is None:  # only the last position's logits are needed (as Hugging Face's generate does)
            out = hf(input_ids=x, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
        else:  # transformers names the cache argument ``cache`` (older releases: ``past_key_values``)
            key = "cache" if "cache" in out_keys(self) else "past_key_values"
            out = hf(input_ids=x[:, -1:], attention_mask=mask, position_ids=positions[:, -1:], use_cache=True,
                     **{key: past})
        self._keys = tuple(out.keys())
        cache = out.get("cache") if "cache" in out.keys() else out.get("past_key_values")
        return out.logits[:, -1], cache

    def generate(self, tokens: Any, attention_mask: Any, *, eos: int | None, stop_at_eos: bool, pad: int,
                 max_new_tokens: int, do_sample: bool, temperature: float, top_p: float | None, top_k: int | None,
                 repetition_penalty: float, on_step: Any = None) -> Any:
        import torch

        if repetition_penalty != 1.0:
            raise AttnlensError("spa: repetition_penalty is not supported with SPA's mixed logits (leave it at 1.0)")
        spa = self.steering
        rows = tokens.shape[0]
        if len(spa.spans) != rows:
            raise AttnlensError(f"the spa steering has spans for {len(spa.spans)} rows; the batch has {rows}")
        mask = attention_mask if attention_mask is not None else torch.ones_like(tokens)
        x = torch.cat([tokens, masked_rows(tokens, spa.spans, spa.mask_token)])
        mask = torch.cat([mask, mask])
        out = tokens
        done = torch.zeros(rows, dtype=torch.bool, device=tokens.device)
        active = torch.arange(rows, device=tokens.device)  # the rows still generating, in x's order
        past = None
        self.mixed = []
        for _ in range(max_new_tokens):
            logits, past = self.step_logits(x, mask, past)
            logits = logits.float()
            n = len(active)
            step_mixed = mix(logits[:n], logits[n:], spa.omega)
            chosen = _choose(step_mixed, do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k)
            full = step_mixed.new_full((rows, step_mixed.shape[-1]), float("nan"))  # ended rows: NaN
            full[active] = step_mixed
            self.mixed.append(full)
            nxt = torch.full((rows,), pad, dtype=chosen.dtype, device=chosen.device)
            nxt[active] = chosen
            if stop_at_eos and eos is not None:
                nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
                done = done | (nxt == eos)
            if on_step is not None:  # the caller's per-step callback: a true flag finishes its row
                flags = on_step(nxt.tolist())
                if flags is not None:
                    if len(flags) != rows:
                        raise AttnlensError(f"on_step returned {len(flags)} flags for {rows} rows")
                    done = done | torch.tensor([bool(f) for f in flags], device=done.device)
            out = torch.cat([out, nxt[:, None]], 1)
            if bool(done.all()):
                break
            step = nxt[active]
            x = torch.cat([x, torch.cat([step, step])[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if DROP_ENDED_ROWS and stop_at_eos and bool(done[active].any()):
                x, mask, past, active = self._drop_ended(x, mask, past, active, done)
        return out

    @staticmethod
    def _drop_ended(x: Any, mask: Any, past: Any, active: Any, done: Any) -> tuple[Any, Any, Any, Any]:
        """Only the rows not ``done`` (both their original and masked copies, and their cache), so an
        ended row costs nothing while the others go on; with a cache that cannot be cut row by row
        (a sliding-window layer), every row goes on."""
        import torch

        from ..core import _internals as tl

        n = len(active)
        keep = (~done[active]).nonzero().flatten()
        select = torch.cat([keep, keep + n])
        if past is not None and not tl.select_kv_cache_rows(past, select):
            return x, mask, past, active
        return x.index_select(0, select), mask.index_select(0, select), past, active.index_select(0, keep)


class SpaMethod(SteeringMethod):
    """SPA: mix the logits of the prompt and of the prompt with the tagged text masked, at every step."""

    name = "spa"
    help = ("Selective Prompt Anchoring: mix the logits of the prompt with those of the prompt with the "
            "<!-> tagged <-!> text masked, omega * original + (1 - omega) * masked, at every step")
    params = (
        Param("omega", _omega, 1.5, "the anchoring weight (1: plain generation; > 1 amplifies the anchored text)"),
        Param("mask_token", _token, None, "the token id put in place of the anchored tokens (default: padding)"),
    )
    spans = "guide"
    edits = "logits"
    replaces = ("guide",)  # the same tags: asked for on the command line, it steers them instead of GUIDE

    def steering(self, model: Any, prompts: Sequence[Any], settings: Mapping[str, Any]) -> Any:
        from ..core.model import pad_id

        spans = [tuple(self.prompt_spans(p)) for p in prompts]
        if not any(spans):
            return None
        token = settings["mask_token"]
        if token is None:
            token = pad_id(model.tokenizer)
        vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
        if vocab is not None and token >= vocab:
            raise AttnlensError(f"spa: mask_token {token} is outside the model's vocabulary of {vocab}")
        return SpaSteering(tuple(spans), settings["omega"], int(token), self.name)


register(SpaMethod())
