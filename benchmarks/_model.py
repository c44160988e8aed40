"""The model a benchmark measures: the embedded one, or a randomly initialised LLaMA at a given shape.

Every model benchmark takes ``--device``, ``--dtype`` and ``--shape`` (:func:`add_model_args`).
``--shape embedded`` is the embedded SmolLM2-135M-Instruct; ``llama-1b`` and ``llama-8b`` build a
randomly initialised LLaMA at that real shape (no hub needed, the embedded tokenizer), so the
same command measures a large model on a GPU; ``tiny`` is a small random LLaMA for quick checks.
Random weights are seeded, so every build of a shape has the same weights.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

SHAPES = {
    # vocab_size None: the embedded tokenizer's
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=None),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0),
}
DTYPES = ("float32", "bfloat16", "float16")


def add_model_args(parser: argparse.ArgumentParser, *, shape: str | None = "embedded",
                   shape_help: str | None = None) -> None:
    """Add ``--device``, ``--dtype`` and ``--shape`` to ``parser``."""
    parser.add_argument("--device", default="cpu", help="torch device of the model and its inputs (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="parameter dtype (default: float32)")
    parser.add_argument("--shape", default=shape, choices=["embedded", *SHAPES],
                        help=shape_help or "the embedded model, or a random LLaMA at that shape (default: embedded)")


def torch_dtype(name: str) -> Any:
    """``"bfloat16"`` -> ``torch.bfloat16``."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def describe(shape: str, device: Any, dtype: str) -> str:
    """A one-line name of the measured model, for a benchmark's header."""
    name = "embedded SmolLM2-135M-Instruct" if shape == "embedded" else f"random LLaMA, shape {shape}"
    return f"{name}, {device}, {dtype}"


def _random_hf(shape: str, device: Any, dtype: Any, attn_implementation: str, tokenizer: Any = None) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: one of embedded, {', '.join(SHAPES)}")
    fields = dict(SHAPES[shape])
    if fields["vocab_size"] is None:
        if tokenizer is None:
            from attnlens.runtime.models import load_embedded_tokenizer

            tokenizer = load_embedded_tokenizer()
        fields["vocab_size"] = len(tokenizer)
    config = LlamaConfig(max_position_embeddings=131072, tie_word_embeddings=False,
                         attn_implementation=attn_implementation, **fields)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def load_bridge(shape: str, device: Any = "cpu", dtype: Any = "float32") -> Any:
    """The TransformerBridge a benchmark measures, as attnlens loads it (eager attention)."""
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    import attnlens as al

    if shape == "embedded":
        return al.load_model(device=device, dtype=dtype)
    from transformer_lens.model_bridge import TransformerBridge

    from attnlens.runtime.models import check_device, load_embedded_tokenizer
    from attnlens.runtime.upstream import apply_workarounds

    check_device(device)
    apply_workarounds()
    tokenizer = load_embedded_tokenizer()
    hf = _random_hf(shape, device, dtype, "eager", tokenizer)
    return TransformerBridge.boot_transformers(shape, hf_model=hf, tokenizer=tokenizer, device=device, dtype=dtype)


def load_hf(shape: str, device: Any = "cpu", dtype: Any = "float32", attn_implementation: str = "sdpa") -> Any:
    """The plain Hugging Face model of the same shape and weights as :func:`load_bridge` (sdpa by default)."""
    if isinstance(dtype, str):
        dtype = torch_dtype(dtype)
    if shape == "embedded":
        from attnlens.runtime.models import load_embedded_hf

        hf, _ = load_embedded_hf(dtype=dtype, attn_implementation=attn_implementation)
        return hf.to(device)
    return _random_hf(shape, device, dtype, attn_implementation)


def clamp_heads(head_config: dict, n_layers: int, n_heads: int) -> dict[str, list[int]]:
    """``{layer: [heads]}`` with every index clamped to the model's last layer and head (for other shapes)."""
    clamped: dict[str, set[int]] = {}
    for layer, heads in head_config.items():
        clamped.setdefault(str(min(int(layer), n_layers - 1)), set()).update(min(h, n_heads - 1) for h in heads)
    return {layer: sorted(heads) for layer, heads in clamped.items()}


def synchronize(device: Any) -> None:
    """Wait for the work queued on an accelerator; nothing on a CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(getattr(torch, device.type, None), "synchronize"):
        getattr(torch, device.type).synchronize()


def clock(device: Any, wall: bool = False) -> Callable[[], float]:
    """A timer in seconds for passes on ``device``.

    On a CPU the process's CPU time (``time.process_time``), or ``time.perf_counter`` with
    ``wall``; on an accelerator the wall time after synchronising, so queued work counts.
    """
    import torch

    device = torch.device(device)
    if device.type == "cpu":
        return time.perf_counter if wall else time.process_time

    def now() -> float:
        synchronize(device)
        return time.perf_counter()

    return now
