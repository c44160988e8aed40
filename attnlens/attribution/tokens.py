"""Token attribution: one score per prompt token toward a target, by any registered method.

``attribute(model, text_or_tokens, method=..., target=...)`` returns a
:class:`TokenAttribution`. The **target** is the log-probability of the
model's next token (``target=None``: its most likely one), or of a given
continuation (a string or token ids), summed over the continuation's tokens.

The row the methods see is the prompt followed by the continuation without its
last token; the *target positions* are the positions that predict the
continuation's tokens (the prompt's last position first).

- a token method (``spans = False``) computes the scores itself
  (:meth:`~attnlens.attribution.registry.AttributionMethod.token_scores`);
- a span method (Influence, rollout, influence_heads, a user's ``run``) is
  traced with one span per prompt token; a token's score is its span's share of
  the target positions at the last layer, averaged over those positions.

:func:`target_logprob` scores many edited rows at once (batched forward passes),
for occlusion and the faithfulness metrics.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.errors import AttnlensError
from ..core.records import Showable
from ..core.validate import is_int
from . import registry

logger = logging.getLogger(__name__)

#: rows per forward pass when scoring edited rows (occlusion, faithfulness curves, IG steps) ...
BATCH = 32
#: ... and at most this many tokens per pass (the logits of a pass are tokens x vocabulary)
TOKENS_PER_PASS = 2048


def rows_per_pass(seq: int, batch: int = BATCH) -> int:
    """Rows of ``seq`` tokens in one forward pass: at most ``batch``, at most :data:`TOKENS_PER_PASS` tokens."""
    return max(1, min(batch, TOKENS_PER_PASS // max(seq, 1)))


def model_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


@dataclass
class Target:
    """What a token is scored toward: the prompt, the target tokens and the positions predicting them."""

    prompt: list[int]
    target: list[int]

    @property
    def n_prompt(self) -> int:
        return len(self.prompt)

    @property
    def row(self) -> torch.Tensor:
        """``[1, n_prompt + len(target) - 1]``: the prompt and every target token but the last."""
        return torch.tensor([self.prompt + self.target[:-1]], dtype=torch.long)

    @property
    def positions(self) -> list[int]:
        """The positions whose next-token prediction is a target token."""
        return list(range(self.n_prompt - 1, self.n_prompt - 1 + len(self.target)))


def _ids(model: Any, value: Any, what: str, *, special: bool) -> list[int]:
    if isinstance(value, str):
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise AttnlensError(f"{what} is text but the model has no tokenizer; give token ids")
        from ..prompts.spans import text_ids

        ids = text_ids(tokenizer, value, what, add_special_tokens=special)
    elif isinstance(value, torch.Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool or value.dim() > 2 or (
                value.dim() == 2 and value.shape[0] != 1):
            raise AttnlensError(f"{what} must be text, a list of token ids or a 1-D / [1, seq] integer tensor")
        ids = [int(t) for t in value.reshape(-1)]
    elif is_int(value):
        ids = [int(value)]
    elif isinstance(value, Sequence) and not isinstance(value, bytes) and all(is_int(t) for t in value):
        ids = [int(t) for t in value]
    else:
        raise AttnlensError(f"{what} must be text, a list of token ids or a 1-D / [1, seq] integer tensor, "
                            f"got {type(value).__name__}")
    if not ids:
        raise AttnlensError(f"{what} is empty: it has no tokens")
    vocab = int(getattr(model.cfg, "d_vocab", 0) or 0)
    for i, t in enumerate(ids):
        if t < 0 or (vocab and t >= vocab):
            raise AttnlensError(f"{what}: {t} at position {i} is not a token id of this model ([0, {vocab}))")
    return ids


def _prompt_and_target(model: Any, text_or_tokens: Any, target: Any, what: str) -> tuple[list[int], list[int] | None]:
    """The prompt's ids and the target's (None: the next token, not known yet), checked against the window."""
    if getattr(model, "cfg", None) is None:
        raise AttnlensError(f"expected a TransformerLens model (with .cfg), got {type(model).__name__}")
    from ..core.model import check_window

    prompt = _ids(model, text_or_tokens, what, special=True)
    ids = None if target is None else _ids(model, target, "target", special=False)
    # the window before any forward pass: a prompt longer than the window fails here, not after a full pass
    check_window(model, len(prompt) + (len(ids) - 1 if ids else 0),
                 what=what if ids is None else f"{what} and its target")
    return prompt, ids


def check_fits(model: Any, text_or_tokens: Any, target: Any = None, *, what: str = "the prompt") -> int:
    """Tokenize a prompt (and a target) and check it against the model's window, without running the model;
    returns the prompt's token count. A prompt that does not fit is a ContextWindowError naming ``what``."""
    return len(_prompt_and_target(model, text_or_tokens, target, what)[0])


def make_target(model: Any, text_or_tokens: Any, target: Any = None) -> Target:
    """The :class:`Target` of a prompt: ``target`` None (the next token), text or token ids (a continuation).

    The prompt (and target) are checked against the model's window before the model runs."""
    prompt, ids = _prompt_and_target(model, text_or_tokens, target, "the prompt")
    if ids is None:
        with torch.no_grad():
            logits = model(torch.tensor([prompt], device=model_device(model)), return_type="logits")
        ids = [int(logits[0, -1].argmax())]
    return Target(prompt, ids)


def logprob_of(logits: torch.Tensor, target: Sequence[int], starts: Sequence[int]) -> torch.Tensor:
    """``[batch]``: the summed log-probability of ``target`` predicted from ``starts[b]`` on in every row."""
    n = len(target)
    idx = torch.tensor(target, device=logits.device)
    out = []
    for b, start in enumerate(starts):
        logp = torch.log_softmax(logits[b, start:start + n].float(), dim=-1)
        out.append(logp.gather(-1, idx[:, None]).sum())
    return torch.stack(out)


def target_logprob(model: Any, prompts: Sequence[Sequence[int]], target: Sequence[int], *,
                   batch: int = BATCH) -> torch.Tensor:
    """The target's log-probability after each prompt (prompts of any lengths; equal lengths share a pass)."""
    device = model_device(model)
    out = torch.empty(len(prompts), dtype=torch.float64)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    tail = list(target[:-1])
    with torch.no_grad():
        for length, members in by_length.items():
            if length == 0:
                raise AttnlensError("an edited prompt has no tokens left; keep at least one")
            step = rows_per_pass(length + len(tail), batch)
            for lo in range(0, len(members), step):
                chunk = members[lo:lo + step]
                rows = torch.tensor([list(prompts[i]) + tail for i in chunk], dtype=torch.long, device=device)
                logits = model(rows, return_type="logits")
                out[chunk] = logprob_of(logits, target, [length - 1] * len(chunk)).double().cpu()
    return out


def span_token_scores(model: Any, method: registry.AttributionMethod, target: Target) -> torch.Tensor:
    """A span method's token scores: each token's one-token span at the target positions, last layer."""
    from .influence import trace_influence

    spans = [(i, i + 1) for i in range(target.n_prompt)]
    trace = trace_influence(model, target.row, spans, methods=(method.name,))
    out = trace[method.name]  # [n_spans, n_layers + 1, seq]
    return out[:, -1, target.positions].double().mean(-1).cpu()


# ----------------------------------------------------------------------------- the record


def _color(value: float, scale: float) -> str:
    """A background colour: red for positive, blue for negative scores, alpha by magnitude."""
    a = 0.0 if scale <= 0 else min(1.0, abs(value) / scale)
    rgb = "220,50,47" if value >= 0 else "38,139,210"
    return f"rgba({rgb},{a * 0.85:.3f})"


@dataclass
class TokenAttribution(Showable):
    """One method's scores of a prompt's tokens toward a target.

    Attributes:
        method: the method's name.
        tokens: the prompt's tokens as text.
        ids: the prompt's token ids.
        scores: one float per prompt token (larger: more toward the target).
        target_tokens, target_ids: the target (a continuation or the model's next token).
        target_logprob: the target's summed log-probability after the prompt.

    ``show()`` follows :func:`attnlens.core.records.show_view` (displayed in a notebook, the view
    returned elsewhere); ``text()`` gives a plain-text view.
    """

    method: str
    tokens: list[str]
    ids: list[int]
    scores: list[float]
    target_tokens: list[str]
    target_ids: list[int]
    target_logprob: float
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "tokens": self.tokens, "ids": self.ids, "scores": self.scores,
                "target": {"tokens": self.target_tokens, "ids": self.target_ids, "logprob": self.target_logprob},
                **({"meta": self.meta} if self.meta else {})}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def top(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` highest-scoring tokens: ``(position, token, score)``."""
        order = sorted(range(len(self.scores)), key=lambda i: -self.scores[i])[:k]
        return [(i, self.tokens[i], self.scores[i]) for i in order]

    def html(self) -> str:
        """A self-contained HTML token view (no scripts, no network): colour by score, score on hover."""
        scale = max((abs(s) for s in self.scores), default=0.0)
        cells = []
        for i, (tok, s) in enumerate(zip(self.tokens, self.scores)):
            cells.append(f'<span title="{i}: {html.escape(repr(tok))} {s:.4g}" style="background:{_color(s, scale)};'
                         f'padding:1px 2px;margin:1px;border-radius:3px;white-space:pre">{html.escape(tok)}</span>')
        target = html.escape("".join(self.target_tokens))
        return (f'<div class="attnlens-attribution" style="font-family:monospace;line-height:1.9">'
                f'<div style="font-family:sans-serif;font-size:90%;margin-bottom:4px"><b>{html.escape(self.method)}'
                f'</b> toward <code>{target}</code> (log p = {self.target_logprob:.3f})</div>'
                f'<div class="attnlens-legend" style="font-family:sans-serif;font-size:80%;margin-bottom:4px">'
                f'<span>-{scale:.3g}</span> <span style="display:inline-block;width:160px;height:10px;'
                f'border:1px solid #888;vertical-align:middle;background:linear-gradient(to right, '
                f'{_color(-1.0, 1.0)}, rgba(255,255,255,0), {_color(1.0, 1.0)})"></span> <span>+{scale:.3g}</span>'
                f' red: toward the target, blue: against, white: neither; scaled to the largest |score|; '
                f'hover a token for its score</div>{"".join(cells)}</div>')

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str | Path) -> Path:
        """Write the HTML view as a page."""
        path = Path(path)
        try:
            path.write_text(f"<!doctype html><meta charset='utf-8'><title>attnlens {html.escape(self.method)}</title>"
                            f"{self.html()}\n", encoding="utf-8")
        except OSError as exc:
            raise AttnlensError(f"cannot write the attribution view to {str(path)!r}: {exc}") from exc
        return path

    def text(self, width: int = 20) -> str:
        """A plain-text view: one line per token with a bar."""
        scale = max((abs(s) for s in self.scores), default=0.0) or 1.0
        lines = [f"{self.method} toward {''.join(self.target_tokens)!r} (log p = {self.target_logprob:.3f})"]
        for i, (tok, s) in enumerate(zip(self.tokens, self.scores)):
            bar = ("+" if s >= 0 else "-") * round(abs(s) / scale * width)
            lines.append(f"{i:4d} {tok!r:>16} {s:+.4f} {bar}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<TokenAttribution {self.method}: {len(self.tokens)} tokens toward {''.join(self.target_tokens)!r}>"


def _token_text(model: Any, ids: Sequence[int]) -> list[str]:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i]) for i in ids]


_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_scores(scores: Any, n_prompt: int, what: str = "scores") -> torch.Tensor:
    """``scores`` as a float64 tensor of ``n_prompt`` finite numbers, else an error naming ``what``."""
    try:
        values = torch.as_tensor(scores.detach().cpu() if isinstance(scores, torch.Tensor) else list(scores))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AttnlensError(f"{what} must be numbers, one per prompt token ({exc})") from None
    if not (values.is_floating_point() or values.dtype in _INTEGERS):
        raise AttnlensError(f"{what} must be real numbers, got a tensor of {values.dtype}")
    values = values.double().reshape(-1)
    if values.numel() != n_prompt:
        raise AttnlensError(f"{what} has {values.numel()} values for {n_prompt} prompt tokens")
    bad = (~torch.isfinite(values)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise AttnlensError(f"{what}: {float(values[i])} at token {i} is not a finite number")
    return values


def scores_for(model: Any, method: str | registry.AttributionMethod, target: Target) -> torch.Tensor:
    """``[n_prompt]`` float64 scores of one method toward a prepared :class:`Target`."""
    m = registry.get(method)
    scores = m.token_scores(model, target)
    if scores is None:
        if not m.spans:
            raise AttnlensError(f"attribution method {m.name!r} gives no token scores")
        scores = span_token_scores(model, m, target)
    return check_scores(scores, target.n_prompt, what=f"attribution method {m.name!r}'s token_scores()")


def attribute(model: Any, text_or_tokens: Any, *, method: str = "influence", target: Any = None) -> TokenAttribution:
    """Score every prompt token toward a target with one registered method.

    Args:
        model: a TransformerLens ``TransformerBridge`` (or a model with the same hook names).
        text_or_tokens: the prompt: text (tokenized with the model's tokenizer, special tokens added)
            or token ids.
        method: a registered attribution method (:func:`attnlens.attribution.methods`).
        target: ``None`` (the model's most likely next token), a continuation's text or token ids.

    Returns:
        A :class:`TokenAttribution` (``.show()``, ``_repr_html_``, ``.to_json()``).
    """
    if not isinstance(method, (str, registry.AttributionMethod)):
        raise AttnlensError(f"method must be a method's name, got {type(method).__name__}")
    m = registry.get(method)
    t = make_target(model, text_or_tokens, target)
    scores = scores_for(model, m, t)
    full = float(target_logprob(model, [t.prompt], t.target)[0])
    logger.debug("attribute: %s, %d tokens, target %s", m.name, t.n_prompt, t.target)
    return TokenAttribution(m.name, _token_text(model, t.prompt), list(t.prompt), [float(s) for s in scores],
                            _token_text(model, t.target), list(t.target), full)
