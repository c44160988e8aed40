"""Where attnlens meets the moving parts of its dependencies: versions, one workaround, one guard.

TransformerLens' ``TransformerBridge`` runs a Hugging Face model through its own
wrapper components, and those lean on how ``transformers`` names its arguments.
When the two drift apart, generation can go wrong without an error. This module
holds everything attnlens does about that, in one place:

- :data:`TESTED`: the versions the test suite passed on (the lock,
  ``requirements.lock``, installs the newest of them).
- :func:`apply_workarounds` (in :mod:`attnlens.core._internals`, with every other internal): the one workaround for a known fault of TransformerLens.
  transformers 5.24 renamed the KV cache argument its attention modules receive
  from ``past_key_values`` to ``cache``; TransformerLens 4.3.0's attention
  bridge (``AttentionBridge._update_kv_cache``) reads only the old name, so every
  cached decoding step through the bridge attends to the new token alone (greedy
  text turns to garbage, bias plans see one-token sequences). The workaround
  hands the cache to the bridge under the name it reads. It is applied only when
  a probe shows the installed TransformerLens ignores ``cache``, so it switches
  itself off once upstream reads the new name; then it can be deleted.
- :func:`check_kv_cache`: the guard. One cached decoding step must give the
  logits of an uncached forward pass; otherwise :class:`UpstreamDriftError`
  names the installed versions and the fix. It runs once per model (when
  attnlens loads it, and before a bias plan is first installed on it).

Checked on TransformerLens 4.3.0 with transformers 5.23.0 (no workaround needed) and
5.24.0 (workaround applied), torch 2.13.0.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import Any

import torch

from ..core.errors import UpstreamDriftError
from ..core import _internals

logger = logging.getLogger(__name__)

#: the versions the test suite passed on; the lock installs the newest of each
TESTED = {
    "torch": ("2.13.0",),
    "transformers": ("5.23.0", "5.24.0"),
    "transformer-lens": ("4.3.0",),
}

_checked: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


def versions() -> dict[str, str]:
    """The installed versions of torch, transformers and TransformerLens."""
    found = {}
    for name in TESTED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def describe_versions() -> str:
    """``torch 2.13.0, transformers 5.24.0, transformer-lens 4.3.0``: for messages."""
    return ", ".join(f"{name} {version}" for name, version in versions().items())


def _is_bridge(model: Any) -> bool:
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return False
    return isinstance(model, TransformerBridge)


def apply_workarounds() -> bool:
    """Install the KV-cache workaround where the installed TransformerLens needs it (idempotent).

    Returns whether it is in place. See :func:`attnlens.core._internals.mend_kv_cache_argument`.
    """
    applied = _internals.mend_kv_cache_argument()
    if applied:
        logger.debug("KV-cache workaround in place (%s)", describe_versions())
    return applied


def _has_hooks(model: Any) -> bool:
    return any(_internals.has_hooks(point) for point in getattr(model, "hook_dict", {}).values())


def _probe_tokens(model: Any, length: int = 6) -> torch.Tensor:
    vocab = int(getattr(model.cfg, "d_vocab", 0) or 0)
    if vocab < 2:
        raise UpstreamDriftError("cannot check the KV cache: the model reports no vocabulary size")
    ids = [(7 + 13 * i) % vocab for i in range(length)]
    device = next(model.parameters()).device
    return torch.tensor([ids], device=device)


@contextmanager
def quiet_cache_rename() -> Iterator[None]:
    """Silence transformers' warning that ``past_key_values`` is now ``cache``.

    TransformerLens 4.3.0's bridge passes the old name; transformers 5.24 takes it
    and warns on every call. attnlens handles the rename (see the module docstring).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)
        yield


def kv_cache_mismatch(model: Any) -> float:
    """Largest difference between a cached decoding step and an uncached forward pass.

    The logits are scaled by the largest absolute logit, so the figure is relative.
    """
    tokens = _probe_tokens(model)
    with torch.no_grad(), quiet_cache_rename():
        full = model(tokens, return_type="logits")[0, -1].float()
        _, cache = model(tokens[:, :-1], return_type="logits_and_cache", use_cache=True)
        step = model(tokens[:, -1:], return_type="logits", past_key_values=cache)[0, -1].float()
    scale = full.abs().max().clamp_min(1e-6)
    return float(((full - step).abs().max() / scale).item())


def check_kv_cache(model: Any, *, force: bool = False) -> None:
    """Raise :class:`UpstreamDriftError` when the bridge's cached decoding is wrong.

    Runs once per model (``force`` runs it again); models that are not a
    ``TransformerBridge`` are not checked.
    """
    if not _is_bridge(model):
        return
    if not force and _checked.get(model):
        return
    if _has_hooks(model):
        # the probe would run the user's own hooks on made-up tokens; check later
        logger.debug("KV-cache check deferred: the model has hooks installed")
        return
    apply_workarounds()
    tolerance = 1e-3 if model.cfg.dtype in (torch.float32, torch.float64) else 5e-2
    mismatch = kv_cache_mismatch(model)
    if mismatch > tolerance:
        tested = "; ".join(f"{name} {' or '.join(v)}" for name, v in TESTED.items())
        raise UpstreamDriftError(
            "the model's KV-cached decoding disagrees with an uncached forward pass "
            f"(relative difference {mismatch:.3g}), so generation would silently be wrong. "
            f"Installed: {describe_versions()}. Tested: {tested}. "
            "Fix: install the tested set (`make setup`, or `pip install -r requirements.lock`)."
        )
    _checked[model] = True
    logger.debug("KV-cached decoding matches an uncached forward (relative difference %.2g)", mismatch)
