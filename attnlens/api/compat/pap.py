"""``transformers.pipeline("pay-attention", model=...)``, as pay-attention-pipeline registers it.

Importing ``attnlens`` arranges for :func:`register` to add the task to
transformers' ``PIPELINE_REGISTRY`` (once) as soon as ``transformers.pipelines`` is
imported (at once if it already is), so ``import attnlens`` stays fast. transformers then builds
:class:`TransformersPayAttentionPipeline` from a model name or path (transformers
loads it), a Hugging Face model, or a ``TransformerBridge``; a Hugging Face model
is wrapped in a bridge (:func:`attnlens.runtime.models.wrap_hf_model`; TransformerLens
wraps its modules in place, so save such a model before handing it over).

Strings are read as pay-attention-pipeline reads them, so its users' outputs do not
change: a plain string is raw text (``chat=True`` for the chat template; ``chat=None``
for attnlens' rule) and only the tags are removed (``tag_whitespace="keep"``;
``"collapse"`` for attnlens' reading, :mod:`attnlens.prompts.tags`).

Records follow transformers' text-generation conventions: ``generated_text`` holds
the prompt and the new text unless ``return_full_text=False``, and ``<?->`` tags add
``influence`` entries. pay-attention-pipeline's keywords (``delta_mid``,
``metric="influence" | "attention_rollout"``) work at construction and per call.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ...core.errors import AttnlensError
from ..pipeline import PayAttentionPipeline, metric_method

logger = logging.getLogger(__name__)

TASK = "pay-attention"


def _as_bridge(model: Any, tokenizer: Any) -> Any:
    if hasattr(model, "cfg") and hasattr(model, "hooks"):  # a TransformerBridge (or alike)
        if tokenizer is not None and getattr(model, "tokenizer", None) is None:
            model.tokenizer = tokenizer
        return model
    if hasattr(model, "generate") and hasattr(model, "config"):  # a Hugging Face model
        from ...runtime.models import wrap_hf_model

        return wrap_hf_model(model, tokenizer)
    raise AttnlensError(
        f"model must be a model name or path, a Hugging Face causal LM or a TransformerBridge; "
        f"got {type(model).__name__}"
    )


class TransformersPayAttentionPipeline(PayAttentionPipeline):
    """What ``transformers.pipeline("pay-attention", ...)`` returns; see the module docstring.

    Everything of :class:`attnlens.api.pipeline.PayAttentionPipeline` applies;
    ``return_full_text`` defaults to True (transformers' default) and ``metric``
    chooses the influence method for every call.
    """

    # transformers asks the class which components to load; the tokenizer comes with the model
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_processor = False
    _load_video_processor = False

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        task: str = TASK,
        delta_mid: float = 1.0,
        layers: Any = "all",
        batch_size: int = 8,
        chat: bool = False,
        return_full_text: bool = True,
        metric: str = "influence",
        convention: str = "stated",
        tag_whitespace: str = "keep",
        device: Any = None,
        dtype: Any = None,
        **kwargs: Any,
    ) -> None:
        unknown = sorted(kwargs)
        if unknown:
            raise AttnlensError(
                f"unknown pay-attention pipeline argument(s) {', '.join(unknown)}; accepted: delta_mid, layers, "
                "batch_size, chat, return_full_text, metric, convention, tag_whitespace (generation arguments such as "
                "max_new_tokens go in the call)"
            )
        if device is not None:
            logger.info("pay-attention: device=%r is ignored; the model stays where it is", device)
        method = metric_method(metric)
        super().__init__(_as_bridge(model, tokenizer), delta_mid=delta_mid, layers=layers, batch_size=batch_size,
                         chat=chat, return_full_text=return_full_text, convention=convention,
                         tag_whitespace=tag_whitespace)
        self.influence_method = method


def register() -> None:
    """Add ``"pay-attention"`` to transformers' ``PIPELINE_REGISTRY`` (a no-op when it is there)."""
    from transformers import AutoModelForCausalLM
    from transformers.pipelines import PIPELINE_REGISTRY

    if TASK in PIPELINE_REGISTRY.get_supported_tasks():
        return
    PIPELINE_REGISTRY.register_pipeline(
        TASK, pipeline_class=TransformersPayAttentionPipeline, pt_model=AutoModelForCausalLM, type="text"
    )
