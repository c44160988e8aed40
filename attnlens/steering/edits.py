"""What a steering does to a run, for every kind (:mod:`attnlens.steering.kinds`).

A steering is a :class:`~attnlens.steering.kinds.KeyBias` (a
:class:`~attnlens.steering.bias.BiasPlan`: a static per-key bias, installed by
:func:`~attnlens.steering.bias.apply_bias` and run by the fused path of a direct
run), a :class:`~attnlens.steering.kinds.SpanReweight` (a :class:`RunEdit`: a
function applied during the run to a layer's pre-softmax scores, its attention
pattern, or the logits) or a :class:`~attnlens.steering.kinds.DecodingOverride`
(it runs the decoding steps itself: SPA). Callers go through the functions here,
which take any kind:

- :func:`install` installs a steering on a model for a ``with`` block (hooks
  removed on exit, also when the block raises);
- :func:`shifted` moves it to a left-padded batch's positions;
- :func:`select_rows` keeps the rows of one chunk of a batch.

A run-time edit runs on the reference path (its hook sees the materialised
scores or pattern), with one exception: a pattern edit that multiplies its
span keys' weights by a factor and renormalises (SpotLight) may say so with a
``span_factor``; the fused path then runs it without a score matrix
(:mod:`attnlens.runtime.fused_edits`). A method with a static form of its edit
returns a BiasPlan instead, which the fused path runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, ContextManager

import torch

from ..core import hooks
from ..core.errors import AttnlensError, SpanError
from ..core.model import Model, model_shape
from ..core.validate import LayerSpec, is_int, resolve_layers
from .bias import BiasPlan
from .kinds import DecodingOverride, SpanReweight, Steering, describe, recorded

logger = logging.getLogger(__name__)

#: the hook points a run-time edit can change, by the name a method gives
POINTS = {"scores": hooks.SCORES, "pattern": hooks.PATTERN, "logits": "unembed.hook_out"}

RowSpans = tuple[tuple[tuple[int, int], ...], ...]


@dataclass(frozen=True)
class EditContext:
    """What an edit function is told besides the tensor.

    ``layer``: the layer (None for logits); ``spans``: per batch row, the
    steered ``(start, end)`` key ranges in the positions of the tokens the
    model sees (padding included); ``point``: ``"scores"``, ``"pattern"`` or
    ``"logits"``.
    """

    point: str
    layer: int | None
    spans: RowSpans

    def key_mask(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[rows, 1, 1, key]`` booleans: True on the steered keys of each row (for scores and patterns)."""
        keys = tensor.shape[-1]
        mask = torch.zeros(len(self.spans), 1, 1, keys, dtype=torch.bool, device=tensor.device)
        for r, row in enumerate(self.spans):
            for s, e in row:
                mask[r, ..., s : min(e, keys)] = True
        return mask

    def position_mask(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[rows, pos, 1]`` booleans: True at the steered positions (for logits ``[batch, pos, vocab]``)."""
        pos = tensor.shape[1]
        mask = torch.zeros(len(self.spans), pos, 1, dtype=torch.bool, device=tensor.device)
        for r, row in enumerate(self.spans):
            for s, e in row:
                mask[r, s : min(e, pos)] = True
        return mask


EditFn = Callable[[torch.Tensor, EditContext], torch.Tensor]

#: ``span_factor(share, seen) -> factor``: given each query's share of attention on its row's span keys
#: (``[rows, heads, query]``) and which queries can see the span (``[rows, query]``), the factor
#: (broadcastable to ``[rows, heads, query]``) the span keys' weights are multiplied by before the
#: pattern is renormalised. An edit that says this is what it does can run on the fused path.
SpanFactor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class RunEdit(SpanReweight):
    """An edit computed during the run: ``fn(tensor, context) -> tensor`` on one hook point (a :class:`SpanReweight`).

    Build it with :meth:`for_prompts`. ``spans`` holds one tuple of ``(start,
    end)`` ranges per batch row (``per_row``) or one for every row.
    """

    point: str
    fn: EditFn
    layers: tuple[int, ...]
    spans: RowSpans
    per_row: bool = True
    name: str = "edit"
    span_factor: SpanFactor | None = None

    @classmethod
    def for_prompts(
        cls,
        model: Model,
        point: str,
        fn: EditFn,
        spans: Sequence[Sequence[tuple[int, int]]],
        *,
        layers: LayerSpec = "all",
        name: str = "edit",
        span_factor: SpanFactor | None = None,
    ) -> "RunEdit":
        """An edit of ``point`` (``"scores"``, ``"pattern"`` or ``"logits"``) with one span list per prompt.

        ``span_factor``: for a pattern edit that multiplies the span keys' weights by a factor and
        renormalises (``fn`` must do just that), the factor as :data:`SpanFactor` says; the fused
        path then runs the edit.
        """
        if point not in POINTS:
            raise AttnlensError(f"a run-time edit changes one of {', '.join(POINTS)}; got {point!r}")
        if not callable(fn):
            raise AttnlensError(f"the edit function must be callable, got {type(fn).__name__}")
        if span_factor is not None and (point != "pattern" or not callable(span_factor)):
            raise AttnlensError("span_factor is a callable, and only a pattern edit can have one")
        rows = []
        for r, row in enumerate(spans):
            out = []
            for span in row:
                if len(span) != 2 or not all(is_int(v) for v in span) or span[0] < 0 or span[1] <= span[0]:
                    raise SpanError(f"row {r}: span {tuple(span)!r} is not a non-empty (start, end) token range")
                out.append((int(span[0]), int(span[1])))
            rows.append(tuple(out))
        resolved = () if point == "logits" else resolve_layers(layers, model_shape(model)[0])
        return cls(point, fn, tuple(resolved), tuple(rows), True, name, span_factor)

    @property
    def rows(self) -> int | None:
        return len(self.spans) if self.per_row else None

    def shifted(self, offsets: Sequence[int]) -> "RunEdit":
        rows = self.spans if self.per_row else self.spans * len(offsets)
        if len(rows) != len(offsets):
            raise AttnlensError(f"the edit has spans for {len(rows)} rows; the batch has {len(offsets)}")
        moved = tuple(tuple((s + o, e + o) for s, e in row) for row, o in zip(rows, offsets))
        return replace(self, spans=moved, per_row=True)

    def select_rows(self, start: int, count: int) -> "RunEdit":
        if not self.per_row:
            return self
        return replace(self, spans=self.spans[start : start + count])

    def hooks(self) -> list[tuple[str, Callable[..., torch.Tensor]]]:
        template = POINTS[self.point]
        if self.point == "logits":
            return [(template, _EditHook(self, None))]
        return [(hooks.name(template, layer), _EditHook(self, layer)) for layer in self.layers]

    @contextmanager
    def install(self, model: Model) -> Iterator["RunEdit"]:
        """Install the edit's hooks for the ``with`` block; they are removed on exit."""
        from ..core.concurrency import call_scope, scoped

        installed = self.hooks()
        logger.debug("installing %d %s edit hooks (%s)", len(installed), self.point, self.name)
        points = getattr(model, "hook_dict", None)
        if self.span_factor is not None and points is not None and all(name in points for name, _ in installed):
            # the fused attention runs the edit from the active steerings (this call's only); the hooks, which
            # attnlens installs and knows by their ids, run it on the reference path
            with call_scope() as scope, _owned(points, scoped(installed, scope)), \
                    recorded(self, {points[name]: fn for name, fn in installed}):
                yield self
            return
        # the hooks act only in this call's context: another thread's forward of the model is left as it is
        with call_scope() as scope, model.hooks(fwd_hooks=scoped(installed, scope)):
            yield self


#: the torch hook ids of the pattern-edit hooks with a span factor that attnlens installed: how the fused
#: path tells them from a user's hooks (which send a layer to the reference path). What it runs comes
#: from the active steerings (:func:`attnlens.steering.kinds.active_at`), never from these hooks.
_owned_ids: set[int] = set()


@contextmanager
def _owned(points: Any, installed: list[tuple[str, Any]]) -> Iterator[None]:
    from ..core import _internals as tl

    handles = []
    try:
        for name, fn in installed:
            handle = tl.add_lens_hook(points[name], fn)
            handles.append((points[name], handle))
            _owned_ids.add(tl.lens_hook_id(handle))
        yield
    finally:
        for point, handle in handles:
            _owned_ids.discard(tl.lens_hook_id(handle))
            tl.remove_lens_hook(point, handle)


def fusable(hook_id: int) -> bool:
    """Whether ``hook_id`` is a pattern-edit hook with a span factor that attnlens installed (any call's)."""
    return hook_id in _owned_ids


class _EditHook:
    """One hook of a :class:`RunEdit`: checks the batch, calls the edit, checks what it returns."""

    def __init__(self, edit: RunEdit, layer: int | None) -> None:
        self.edit = edit
        self.layer = layer

    def context(self, batch: int) -> EditContext:
        """The edit's context for a batch of ``batch`` rows."""
        edit = self.edit
        spans = edit.spans
        if edit.per_row and len(spans) != batch:
            if len(spans) == 1:
                spans = spans * batch
            else:
                raise AttnlensError(
                    f"the {edit.name} edit has spans for {len(spans)} rows but the run has a batch of {batch}"
                )
        elif not edit.per_row:
            spans = spans * batch
        return EditContext(edit.point, self.layer, spans)

    def __call__(self, tensor: torch.Tensor, hook: Any = None) -> torch.Tensor:
        edit = self.edit
        return checked_output(edit, tensor, edit.fn(tensor, self.context(tensor.shape[0])), self.layer)

    def factor(self, share: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        """The edit's ``span_factor(share, seen)`` checked at the boundary: real finite numbers that broadcast
        to ``share``'s ``[rows, heads, query]``, as float32 of that shape."""
        edit = self.edit
        where = f"the {edit.name} edit's span_factor" + (f" at layer {self.layer}" if self.layer is not None else "")
        got = edit.span_factor(share, seen)  # type: ignore[misc]
        try:
            factor = torch.as_tensor(got.detach() if isinstance(got, torch.Tensor) else got)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise AttnlensError(f"{where} must return numbers (a tensor or a float), got {type(got).__name__} "
                                f"({exc})") from None
        if not (factor.is_floating_point() or factor.dtype in _INTEGERS):
            raise AttnlensError(f"{where} must return real numbers, got a tensor of {factor.dtype}")
        try:
            factor = factor.to(device=share.device, dtype=torch.float32).expand(share.shape)
        except RuntimeError:
            raise AttnlensError(f"{where} returned shape {tuple(factor.shape)}, which does not broadcast to "
                                f"[rows, heads, query] = {tuple(share.shape)}") from None
        if not bool(torch.isfinite(factor).all()):
            raise AttnlensError(f"{where} returned a factor that is not a finite number (NaN or infinite)")
        return factor

    def __repr__(self) -> str:
        return f"attnlens.edit({self.edit.name}, {self.edit.point}, layer={self.layer})"


_INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def checked_output(edit: RunEdit, tensor: torch.Tensor, out: Any, layer: int | None = None) -> torch.Tensor:
    """What an edit's ``fn`` returned for ``tensor``, checked at the boundary (else an AttnlensError naming the
    edit): a tensor of the same shape on the same device, of floating point (cast to ``tensor``'s dtype), and
    without NaN where ``tensor`` had none (a NaN pattern or score decodes as nothing and says nothing)."""
    where = f"the {edit.name} edit of {edit.point}" + (f" at layer {layer}" if layer is not None else "")
    if not isinstance(out, torch.Tensor) or out.shape != tensor.shape:
        raise AttnlensError(
            f"{where} must return a tensor shaped {tuple(tensor.shape)}, got "
            + (f"{tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__)
        )
    if not out.is_floating_point():
        raise AttnlensError(f"{where} must return floating-point numbers ({tensor.dtype}), got {out.dtype}")
    if out.device != tensor.device:
        raise AttnlensError(f"{where} returned a tensor on {out.device}; the {edit.point} are on {tensor.device}")
    if out.dtype != tensor.dtype:
        out = out.to(tensor.dtype)
    if bool(torch.isnan(out).any()) and bool((torch.isnan(out) & ~torch.isnan(tensor)).any()):
        raise AttnlensError(f"{where} returned NaN where the {edit.point} it was given had numbers")
    return out


def _kind(steering: Any, what: str) -> Steering:
    if not isinstance(steering, Steering):
        raise AttnlensError(
            f"a steering must be a KeyBias (a BiasPlan), a SpanReweight (a RunEdit) or a DecodingOverride "
            f"(attnlens.steering.kinds); {what} got {type(steering).__name__}"
        )
    return steering


def install(model: Model, steering: Steering) -> ContextManager[Any]:
    """Install a steering of any kind (:mod:`attnlens.steering.kinds`) for a ``with`` block."""
    return _kind(steering, "install").install(model)


def shifted(steering: Steering, offsets: Sequence[int]) -> Steering:
    """``steering`` in the positions of a batch left-padded by ``offsets``."""
    return _kind(steering, "shifted").shifted(offsets)


def rows_of(steering: Steering) -> int | None:
    """How many rows ``steering`` is for (None: every row alike)."""
    return _kind(steering, "rows_of").rows


def check_rows(steering: Steering, batch: int, what: str = "the steering") -> None:
    """A steering with parts for rows past a batch of ``batch`` rows is an AttnlensError naming the row (split
    into chunks by :func:`select_rows`, those parts would be dropped without a word)."""
    if isinstance(steering, BiasPlan):
        beyond = [t.row for t in steering.terms if t.row is not None and t.row >= batch]
        if beyond:
            raise AttnlensError(f"{what} has a bias term for row {max(beyond)}; the batch has {batch} "
                                f"row{'s' if batch != 1 else ''} (rows count from 0)")
        return
    rows = rows_of(steering)
    if rows is not None and rows > batch:
        raise AttnlensError(f"{what} ({describe(steering)}) has spans for {rows} rows; the batch has {batch}")


def select_rows(steering: Steering, start: int, count: int) -> Steering:
    """The part of ``steering`` for rows ``[start, start + count)``, renumbered from 0."""
    return _kind(steering, "select_rows").select_rows(start, count)


def decoder_of(steerings: Sequence[Steering]) -> DecodingOverride | None:
    """The one :class:`DecodingOverride` among ``steerings`` (it runs the decoding steps itself), or None.

    Its ``bind(run)`` returns a run whose ``generate`` it implements.

    Such a steering (SPA: logits mixed from extra rows) takes over a generation's
    decoding steps; the others stay installed as hooks. Two of them in one run raise.
    """
    found = [s for s in steerings if isinstance(s, DecodingOverride)]
    if len(found) > 1:
        raise AttnlensError(
            "only one steering that runs its own decoding steps can apply to a generation; got "
            + ", ".join(describe(s) for s in found)
        )
    if found:
        others = [s for s in steerings if s is not found[0] and rows_of(s) not in (None, 1)]
        if others:
            raise AttnlensError(
                f"{describe(found[0])} runs extra rows in every forward pass, so it combines "
                "with other steerings only for one prompt at a time (generate with batch_size=1)"
            )
        return found[0]
    return None
