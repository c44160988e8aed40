"""The model cache: dequantized models stored as safetensors, config and tokenizer, checked by digest.

A packaged GGUF model (the embedded SmolLM2, Gemma 3 270M) is dequantized once by
``transformers`` and written as an *entry*: a directory with ``model.safetensors``,
``config.json``, the tokenizer and ``attnlens.json`` (the cache version, the source, the
SHA-256 of the weights and of every other file: config, tokenizer, chat template). :func:`ensure_entry` builds an entry on first use, checks
it when asked (:func:`verify_cache_entry`) and rebuilds a damaged one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ModelLoadError

logger = logging.getLogger(__name__)

_CACHE_VERSION = 1


def cache_dir() -> Path:
    """The directory attnlens caches into: ``$ATTNLENS_CACHE`` or the user's cache dir."""
    env = os.environ.get("ATTNLENS_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("attnlens"))


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


def entry_ready(directory: Path) -> bool:
    """Whether ``directory`` holds a finished entry of this cache version (its weights are not checked)."""
    marker = _read_marker(directory)
    return marker is not None and marker.get("version") == _CACHE_VERSION


def file_digest(path: Path) -> str:
    """The SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _small_files(directory: Path) -> dict[str, Path]:
    """The entry's files other than its weights and marker (config, tokenizer, chat template), by name;
    hidden files (a desktop's ``.DS_Store``) are not the model's and are left out."""
    return {p.name: p for p in sorted(Path(directory).iterdir())
            if p.name not in (_MARKER, _WEIGHTS) and not p.name.startswith((_MARKER + ".tmp", "."))}


def _file_digests(directory: Path) -> dict[str, str]:
    """The SHA-256 of each of the entry's :func:`_small_files` (directories among them are named, not read)."""
    return {name: file_digest(path) if path.is_file() else "(not a file)"
            for name, path in _small_files(directory).items()}


def _check_files(directory: Path, recorded: Any) -> str | None:
    """What differs between the entry's config and tokenizer files and the digests written with them:
    a file changed, missing (a deleted chat template) or added; None when nothing does."""
    if not isinstance(recorded, dict):
        return f"its {_MARKER} has damaged file digests"
    present = _small_files(directory)
    for name in sorted(recorded):
        if name not in present:
            return f"{name} is missing"
        if not present[name].is_file() or file_digest(present[name]) != recorded[name]:
            return f"{name} does not match the digest written with it"
    added = sorted(set(present) - set(recorded))
    if added:
        return f"{added[0]} was added after the entry was written"
    return None


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
            unknown = sorted(names - set(expected))
            if unknown:  # e.g. a config.json that names fewer layers than the weights hold
                return (f"its config.json does not describe the tensor {unknown[0]!r}"
                        + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                        + " of its weights")
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


def verify_cache_entry(directory: Path, *, weights: bool = True) -> str | None:
    """What is wrong with a cache entry, or None.

    Its config and tokenizer files (``config.json``, the tokenizer, the chat template) must be the
    ones written with it: each matches its digest, none is missing or added. With ``weights=True``
    its weights must match their digest too. An entry from before weight digests is inspected tensor
    by tensor against its ``config.json`` (every tensor present and described, the right shape,
    finite, not all zeros), then given its digests; so is one from before file digests.
    """
    marker = _read_marker(directory)
    if marker is None or marker.get("version") != _CACHE_VERSION:
        return f"its {_MARKER} is missing or damaged"
    for needed in ("config.json", _WEIGHTS):
        if not (directory / needed).is_file():
            return f"{needed} is missing"
    files = marker.get("files")
    if files is not None:
        problem = _check_files(directory, files)
        if problem is not None:
            return problem
    if not weights:
        return None
    weights_path = directory / _WEIGHTS
    stat = weights_path.stat()
    key = (str(weights_path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _verified and files is not None:
        return None
    digest = marker.get("sha256")
    if isinstance(digest, str):
        if marker.get("size") not in (None, stat.st_size) or file_digest(weights_path) != digest:
            # changed since it was written: name what is wrong when a tensor shows it
            return _inspect_weights(directory) or f"{_WEIGHTS} does not match the digest written with it"
    if not isinstance(digest, str) or files is None:
        problem = _inspect_weights(directory)
        if problem is not None:
            return problem
        try:  # record the digests, so later loads check every file quickly
            _write_marker(directory, {**marker, "sha256": digest if isinstance(digest, str) else
                                      file_digest(weights_path), "size": stat.st_size,
                                      "files": _file_digests(directory)})
        except OSError:
            pass  # a read-only cache: checked again next time
    _verified.add(key)
    return None


def _write_marker(directory: Path, marker: dict[str, Any]) -> None:
    tmp = directory / (_MARKER + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(marker), encoding="utf-8")
    tmp.replace(directory / _MARKER)


def write_cache_entry(directory: Path, model: Any, tokenizer: Any, *, source: str, name: str | None = None) -> None:
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
        if name is not None:
            config["_name_or_path"] = name
        if not config.get("architectures"):  # a GGUF's config names none; TransformerLens boots by it
            config["architectures"] = [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        save_model(model, str(tmp / _WEIGHTS))  # handles a tied embedding
        tokenizer.save_pretrained(str(tmp))
        weights = tmp / _WEIGHTS
        _write_marker(tmp, {"version": _CACHE_VERSION, "source": source, "sha256": file_digest(weights),
                            "size": weights.stat().st_size, "files": _file_digests(tmp)})
        if directory.is_symlink():
            directory.unlink()  # the link goes; what it pointed at is left alone
        elif directory.exists():  # a stale, partial or damaged entry
            shutil.rmtree(directory)
        tmp.rename(directory)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelLoadError(
            f"cannot write the model cache at {str(directory)!r}: {exc.strerror or exc}. "
            "Set ATTNLENS_CACHE to a writable directory with room for it "
            "(about 600 MB for the embedded model, 1.2 GB for gemma-3-270m)"
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


def clear_hint(directory: Path) -> str:
    return (f"remove it (rm -rf {str(directory)!r}; the next load rebuilds it) "
            "or point ATTNLENS_CACHE at another directory")




def build_from_gguf(directory: Path, gguf: Path, *, name: str, label: str) -> None:
    """Dequantize the GGUF file ``gguf`` once and write it as the cache entry ``directory``, with a progress bar."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("dequantizing %s into %s (first load only)", gguf.name, directory)
    with tqdm(total=3, desc=f"caching {label}", unit="step", disable=None) as bar:
        bar.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        bar.update()
        bar.set_postfix_str("weights")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        bar.update()
        bar.set_postfix_str("writing")
        write_cache_entry(directory, model, tokenizer, source=gguf.name, name=name)
        bar.update()


def ensure_entry(directory: Path, build: Callable[[Path], None], *, verify: bool = False) -> Path:
    """The cache entry ``directory``, built by ``build(directory)`` when missing.

    The config and tokenizer files are always checked against their digests (milliseconds);
    with ``verify=True`` the weights too (:func:`verify_cache_entry`). A damaged entry is
    rebuilt (a WARNING says what was wrong), and one that cannot be rebuilt is a
    :class:`ModelLoadError` that says how to clear it.
    """
    _clear_leftovers(directory)
    problem = None
    if entry_ready(directory):
        problem = verify_cache_entry(directory, weights=verify)
        if problem is None:
            return directory
        logger.warning("the model cache at %s is damaged (%s); rebuilding it", directory, problem)
    elif directory.exists() or directory.is_symlink():
        logger.info("the model cache at %s is incomplete; rebuilding it", directory)
    try:
        build(directory)
    except ModelLoadError as exc:
        if problem is None:
            raise
        raise ModelLoadError(
            f"the model cache at {str(directory)!r} is damaged ({problem}) and could not be rebuilt ({exc}); "
            + clear_hint(directory)
        ) from None
    again = verify_cache_entry(directory, weights=verify)
    if again is not None:
        raise ModelLoadError(
            f"the model cache at {str(directory)!r} is damaged ({again}) even after rebuilding it; "
            + clear_hint(directory)
        )
    return directory


def load_entry(directory: Path, *, dtype: torch.dtype, attn_implementation: str, label: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` read from a cache entry; an unreadable one is a ModelLoadError saying how to clear it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    try:
        hf_logging.disable_progress_bar()  # reading cached weights takes seconds at most: no bar
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=dtype, attn_implementation=attn_implementation
        ).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"cannot load {label} from its cache at {str(directory)!r} ({type(exc).__name__}: {exc}); "
            + clear_hint(directory)
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return model, tokenizer
