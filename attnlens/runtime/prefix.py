"""Profiling's runtime: many rows of one prompt from a shared prefix KV cache, optionally mid-stack.

:class:`PrefixRun` runs the prompt's prefix once, then each call runs the
suffix for ``rows`` rows from a copy of that cache and returns the logits that
predict the target tokens. With ``skip`` it keeps the unsteered residual stream
entering every block, so rows whose steering starts at block ``l`` start there;
the blocks before ``l`` are replaced, for the call only, by a pass-through
(:func:`attnlens.core._internals.replace_forward`). Bias plans installed
around a call act as in any forward pass. Used by
:func:`attnlens.api.profile.profile_heads`.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float

from ..core.model import Model
from ..core import hooks as hooks_
from ..core.model import model_device, model_shape
from ..core import _internals as tl
from ..core.concurrency import call_scope, exclusive, scoped

logger = logging.getLogger(__name__)


def _pass_through(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


class PrefixRun:
    """Runs the suffix of one example for many rows, from a shared prefix KV cache.

    With ``skip`` it also keeps the unsteered residual stream entering every
    block, so rows that steer heads of layer ``l`` or later start at block ``l``
    (blocks before it are passed through without computing: their output is the
    unsteered one).
    """

    def __init__(self, model: Model, ids: Sequence[int], n_target: int, prefix: int, *, keep_logits: bool,
                 skip: bool) -> None:
        """``ids``: prompt + target tokens; the last ``n_target`` are predicted; the first ``prefix``
        (0: none) run once and their KV cache is shared by every row."""
        self.model = model
        device = model_device(model)
        self.ids = torch.tensor([list(ids)], dtype=torch.long, device=device)
        self.n_target = n_target
        self.prefix = prefix
        self.keep_logits = keep_logits
        self.cache = None
        with exclusive(model):  # other threads' runs of the model wait for this one
            self._prepare(model, skip)

    def _prepare(self, model: Model, skip: bool) -> None:
        if self.prefix > 0:
            # the prefix pass must fill the cache it returns on every supported release, also when
            # no bias plan has been installed yet (which is where the mend is otherwise applied)
            tl.mend_kv_cache_argument()
            try:
                _, self.cache = model(
                    self.ids[:, : self.prefix], return_type="logits_and_cache", use_cache=True, **self._keep(1)
                )
            except (TypeError, ValueError, NotImplementedError, AttributeError) as exc:
                logger.info("no shared prefix cache for this model (%s); running whole rows", exc)
                self.cache = None
            if self.cache is None:
                self.prefix = 0
        self.resid: dict[int, torch.Tensor] = {}
        if skip:
            n_layers = model_shape(model)[0]

            def keep(tensor: torch.Tensor, hook: Any) -> None:
                self.resid[int(hook.name.split(".")[1])] = tensor.detach().clone()

            hooks = [(hooks_.name(hooks_.BLOCK_IN, layer), keep) for layer in range(1, n_layers)]
            with call_scope() as scope, model.hooks(fwd_hooks=scoped(hooks, scope)):
                self.baseline = self(1)
        else:
            self.baseline = self(1)

    @property
    def suffix_len(self) -> int:
        return self.ids.shape[1] - self.prefix

    def _keep(self, n: int) -> dict[str, Any]:
        return {"logits_to_keep": n} if self.keep_logits else {}

    def __call__(self, rows: int, start_layer: int = 0) -> Float[torch.Tensor, "rows n_target vocab"]:
        """Target-predicting logits ``[rows, n_target, vocab]`` (bias hooks installed by the caller).

        Holds the model for the call: the blocks passed through with ``start_layer`` are
        replaced for this call only, and no other thread's forward runs meanwhile.
        """
        with exclusive(self.model):
            return self._call(rows, start_layer)

    def _call(self, rows: int, start_layer: int) -> Float[torch.Tensor, "rows n_target vocab"]:
        kwargs: dict[str, Any] = {}
        if self.keep_logits:  # only the positions that predict the target reach the unembedding
            end = self.suffix_len - 1
            kwargs["logits_to_keep"] = torch.arange(end - self.n_target, end, device=self.ids.device)
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            if rows > 1:
                cache.batch_repeat_interleave(rows)
            kwargs["past_key_values"] = cache
        from .upstream import quiet_cache_rename  # the bridge hands the cache on under its old name

        with quiet_cache_rename():
            if start_layer > 0:
                resid = self.resid[start_layer].expand(rows, -1, -1)
                with tl.replace_forward(list(self.model.blocks)[:start_layer], _pass_through):
                    logits = self.model(resid, start_at_layer=start_layer, **kwargs)
            else:
                logits = self.model(self.ids[:, self.prefix :].expand(rows, -1), **kwargs)
        if logits.shape[1] != self.n_target:  # every position came back
            logits = logits[:, -(self.n_target + 1) : -1]
        return logits


def skip_reproduces_baseline(runner: "PrefixRun", n_layers: int) -> bool:
    """Whether starting mid-stack reproduces the unsteered full pass on this model."""
    layer = n_layers // 2
    if layer < 1 or layer not in runner.resid:
        return False
    try:
        logits = runner(1, layer)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not skip on this model
        logger.info("starting at block %d fails on this model (%s); running every block", layer, exc)
        return False
    ok = logits.shape == runner.baseline.shape and bool(
        torch.allclose(logits, runner.baseline, atol=1e-3, rtol=1e-4)
    )
    if not ok:
        logger.info("starting at block %d does not reproduce the full pass on this model; running every block", layer)
    return ok


def can_skip(model: Model) -> bool:
    return tl.can_start_at_layer(model)


def supports_logits_to_keep(model: Model) -> bool:
    hf = getattr(model, "original_model", None)
    try:
        return hf is not None and "logits_to_keep" in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return False


