"""Where the studies' data comes from: the files shipped in ``data/``, a local file, or a Hugging Face data set."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..core import records
from ..core.errors import ExperimentError
from ..core.validate import redact_url

logger = logging.getLogger(__name__)

#: short names for the data sets the GUIDE experiments used
DATASET_ALIASES = {
    "openwebtext": "Skylion007/openwebtext",
    "blbooks": "TheBritishLibrary/blbooks",
    "bl-books": "TheBritishLibrary/blbooks",
}


def data_file(name: str) -> Path:
    """A file shipped in ``attnlens/experiments/data``."""
    path = Path(str(resources.files("attnlens.experiments").joinpath("data", name)))
    if not path.is_file():
        raise ExperimentError(f"the shipped data file {name!r} is missing from {path.parent}")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in records.read_jsonl(path, error=ExperimentError)]


def read_text(path: Path) -> str:
    """A UTF-8 text file as a reader sees it: a byte-order mark dropped, CRLF and CR line ends as LF."""
    try:
        content = Path(path).read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ExperimentError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ExperimentError(f"{str(path)!r} is not UTF-8 (invalid byte at {exc.start})") from None
    return content.replace("\r\n", "\n").replace("\r", "\n")


_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n")


def passages(text: str) -> list[str]:
    """The paragraphs of a text: runs of lines between blank lines (lines of spaces count as blank)."""
    return [p.strip() for p in _BLANK_LINES.split(text) if p.strip()]


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records from a ``.jsonl`` file or a ``.json`` list."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_bytes().decode("utf-8-sig"))
        except OSError as exc:
            raise ExperimentError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ExperimentError(f"{path} is not UTF-8 (invalid byte at {exc.start})") from None
        except json.JSONDecodeError as exc:
            raise ExperimentError(f"{path} is not valid JSON ({exc.msg})") from None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise ExperimentError(f"{path} must hold a list of JSON objects")
        return data
    return read_jsonl(path)


def check_unique_ids(records: list[dict[str, Any]], where: str) -> None:
    """Every record's ``id`` differs from the others' (rows are keyed by it): else an ExperimentError naming them."""
    first: dict[str, int] = {}
    repeated = []
    for n, record in enumerate(records):
        key = str(record.get("id"))
        if key in first:
            repeated.append(f"{key!r} (records {first[key]} and {n})")
        else:
            first[key] = n
    if repeated:
        raise ExperimentError(
            f"{where} has repeated item ids: {', '.join(repeated[:10])}"
            + (f" and {len(repeated) - 10} more" if len(repeated) > 10 else "")
            + "; every item needs its own id"
        )


def is_local(dataset: str) -> bool:
    return Path(dataset).expanduser().exists()


def hf_texts(dataset: str, *, split: str, field: str, count: int, min_words: int = 0) -> list[str]:
    """The first ``count`` texts (with at least ``min_words`` words) of a Hugging Face data set, streamed.

    Raises:
        ExperimentError: ``datasets`` is missing, or the data set cannot be reached
            (offline, a wrong name, a missing field).
    """
    try:
        import datasets
    except ImportError:
        raise ExperimentError(
            f"--dataset {dataset!r} needs the 'datasets' package (pip install datasets)"
        ) from None
    name = DATASET_ALIASES.get(dataset.lower(), dataset)
    if not _offline_mode():
        endpoint = _hub_endpoint()
        if not _reachable(endpoint):
            raise ExperimentError(
                f"cannot load the data set {dataset!r}: the Hugging Face hub ({redact_url(endpoint)}) cannot be reached "
                "(offline?). Use the shipped data (no --dataset), a local file, or set HF_HUB_OFFLINE=1 to "
                "read a copy already in the datasets cache"
            )
    logger.info("streaming %s (split %s) from the Hugging Face hub", name, split)
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
        texts = []
        for record in stream:
            if field not in record:
                raise ExperimentError(
                    f"data set {name!r} has no field {field!r} (fields: {', '.join(record)}); use --text-field"
                )
            text = record[field]
            if isinstance(text, str) and len(text.split()) >= min_words:
                texts.append(text)
                if len(texts) >= count:
                    break
    except ExperimentError:
        raise
    except Exception as exc:  # datasets raises many kinds: connection, hub, file-not-found
        raise ExperimentError(
            f"could not load the data set {dataset!r} from the Hugging Face hub (offline, or a wrong name?): "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not texts:
        raise ExperimentError(f"data set {name!r} gave no text in field {field!r}")
    return texts


def _offline_mode() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds."""
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences(text: str) -> list[str]:
    """Split prose into sentences (at ., ! or ? followed by whitespace)."""
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def truncate_words(text: str, max_words: int) -> str:
    """The leading whole sentences of ``text`` within ``max_words`` words (at least one sentence)."""
    out: list[str] = []
    words = 0
    for sentence in sentences(text):
        n = len(sentence.split())
        if out and words + n > max_words:
            break
        out.append(sentence)
        words += n
    return " ".join(out)
