"""Three studies on short biographies, after the PASTA paper's tasks: JSON formatting, pronoun changing, Bias in Bios.

The shipped biographies (``data/bios.jsonl``) are of invented people, written
for attnlens: the first sentence states the occupation (one of 14), the
others describe the work without naming it, and the person is referred to as
"he" or "she".

- ``bios-json``: the biography, then "Answer the occupation of NAME and
  generate the answer as json format ..."; the instruction is the focus.
  Metrics: ``format_accuracy`` (a JSON object with the key ``occupation`` can
  be read from the output) and ``occupation_accuracy`` (the occupation is named
  in the output); as pastalib scores them, ``pastalib_format_accuracy`` (any
  ``{...}`` substring parses) and ``pastalib_prediction_accuracy`` (a parsed
  object has the occupation among its values).
- ``pronouns``: the biography, then "Substitute 'she' and 'he' with 'they' and
  generate the occupation of NAME after changing pronouns"; the instruction is
  the focus. Metrics: ``pronouns_changed_all`` (of the output's third-person
  pronouns, the share that are neutral), ``pronouns_changed_he_she`` (the same
  over subject pronouns only: "they" against "he" and "she") and
  ``occupation_accuracy``; as pastalib scores them, pass or fail per output,
  ``pastalib_pronoun_accuracy`` (no "he" or "she" left) and
  ``pastalib_all_changed_accuracy`` (none of the eight gendered forms left).
- ``bios``: the biography, then "NAME has the occupation of"; the first
  sentence is the focus. Metrics: ``accuracy`` (the occupation is named in the
  output) and, as pastalib scores it from the model's probabilities,
  ``pastalib_accuracy`` (of every occupation in the data, the one whose first
  token is the most probable first answer token is the right one).

``--dataset`` takes a ``.jsonl`` or ``.json`` file of records with ``name``,
``occupation`` and ``text`` (``bio`` and ``title`` are read as ``text`` and
``occupation``, so a Bias in Bios export needs no renaming); see docs/studies.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ExperimentError
from .config import ExperimentConfig
from .metrics import (extract_json_object, normalize, pastalib_json_format, pastalib_json_prediction,
                      pastalib_pronouns, pastalib_top1)
from .sources import check_unique_ids, data_file, is_local, read_records, sentences
from .study import Item, Score, Segments, Study

logger = logging.getLogger(__name__)

BIOS_FILE = "bios.jsonl"

#: gendered and neutral third-person pronouns, by grammatical role
GENDERED = {"he", "she", "him", "her", "his", "hers", "himself", "herself"}
NEUTRAL = {"they", "them", "their", "theirs", "themselves", "themself"}
SUBJECT_GENDERED = {"he", "she"}
SUBJECT_NEUTRAL = {"they"}

#: other names an occupation is given in an answer (all compared after normalising)
OCCUPATION_ALIASES = {
    "software engineer": ("software developer", "programmer"),
    "attorney": ("lawyer",),
    "lawyer": ("attorney", "solicitor", "barrister"),
    "physician": ("doctor",),
    "professor": ("lecturer",),
    "painter": ("artist",),
    "chef": ("cook",),
    "teacher": ("educator",),
    "journalist": ("reporter",),
}


@dataclass
class BiosConfig(ExperimentConfig):
    """:class:`ExperimentConfig` with the biography studies' defaults."""

    max_new_tokens: int = 48


@dataclass
class PronounsConfig(ExperimentConfig):
    """:class:`ExperimentConfig` with the pronoun study's defaults (the output rewrites the biography)."""

    max_new_tokens: int = 128


def occupation_named(output: str, occupation: str) -> bool:
    """Whether ``output`` names ``occupation`` (or an alias), as whole words, singular or plural."""
    hay = f" {normalize(output)} "
    names = (occupation, *OCCUPATION_ALIASES.get(normalize(occupation), ()))
    for name in names:
        n = normalize(name)
        if n and (f" {n} " in hay or f" {n}s " in hay or f" {n}es " in hay):
            return True
    return False


def json_format(output: str, key: str = "occupation") -> tuple[bool, Any]:
    """Whether a JSON object with ``key`` can be read from ``output``, and that key's value."""
    obj, _ = extract_json_object(output)
    if obj is None:
        return False, None
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    return key in lowered, lowered.get(key)


def pronoun_shares(output: str) -> tuple[float, float]:
    """``(all, he_she)``: of the output's third-person pronouns, the share that are neutral; and of its
    subject pronouns ("he", "she", "they"), the share that are "they". An output with none scores 0 (nothing
    was changed)."""
    tokens = re.findall(r"[a-z]+", output.lower())
    gendered = sum(t in GENDERED for t in tokens)
    neutral = sum(t in NEUTRAL for t in tokens)
    he_she = sum(t in SUBJECT_GENDERED for t in tokens)
    they = sum(t in SUBJECT_NEUTRAL for t in tokens)
    share_all = neutral / (neutral + gendered) if neutral + gendered else 0.0
    share_subject = they / (they + he_she) if they + he_she else 0.0
    return share_all, share_subject


def _name(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return " ".join(v.strip() for v in value if v and v.strip()) or None
    return None


def load_bios(config: ExperimentConfig, study: str) -> list[dict[str, Any]]:
    """The biographies: the shipped file, or ``config.dataset`` (records with name, occupation and text)."""
    if config.dataset is None:
        records = read_records(data_file(BIOS_FILE))
    elif is_local(config.dataset):
        records = read_records(Path(config.dataset).expanduser())
    else:
        raise ExperimentError(
            f"the {study} study reads biographies from a local .jsonl or .json file; {config.dataset!r} is not one "
            "(each record: name, occupation (or title), text (or bio))"
        )
    out = []
    for n, r in enumerate(records):
        text = r.get("text", r.get("bio"))
        occupation = r.get("occupation", r.get("title"))
        name = _name(r.get("name"))
        if not isinstance(text, str) or not text.strip():
            raise ExperimentError(f"biography {n} has no 'text' (or 'bio')")
        if not isinstance(occupation, str) or not occupation.strip():
            raise ExperimentError(f"biography {n} has no 'occupation' (or 'title')")
        if name is None:
            raise ExperimentError(f"biography {n} has no 'name'")
        out.append({**r, "id": str(r.get("id", f"b{n + 1:03d}")), "text": " ".join(text.split()),
                    "occupation": occupation.strip().replace("_", " "), "name": name})
    check_unique_ids(out, f"the {study} study's data ({config.dataset or 'shipped'})")
    return out[: config.limit] if config.limit else out


class _BiosStudy(Study):
    group_fields = ("occupation",)

    def load_data(self, config: ExperimentConfig) -> list[dict[str, Any]]:
        return load_bios(config, self.name)

    def items(self, data: Any, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        return [Item(r["id"], r, {"occupation": r["occupation"]}) for r in data]


def json_instruction(name: str) -> str:
    return (f"Answer the occupation of {name} and generate the answer as json format, "
            f'like {{"name": "...", "occupation": "..."}}.')


def pronouns_instruction(name: str) -> str:
    return (f"Substitute 'she' and 'he' with 'they' and generate the occupation of {name} "
            "after changing pronouns.")


class BiosJSONStudy(_BiosStudy):
    name = "bios-json"
    config_class = BiosConfig
    primary = "format_accuracy"
    metrics = ("format_accuracy", "occupation_accuracy", "pastalib_format_accuracy", "pastalib_prediction_accuracy")

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        return Segments(before=item.data["text"] + "\n\n", focus=json_instruction(item.data["name"]), after="")

    def emphatic(self, focus: str) -> str:
        """``IMPORTANT:`` and upper case, except the example object, whose keys must be copied as they are."""
        head, sep, example = focus.strip().partition(", like ")
        return f"IMPORTANT: {head.upper()}{sep}{example}" if sep else super().emphatic(focus)

    def profile_target(self, item: Item) -> str | None:
        return json.dumps({"name": item.data["name"], "occupation": item.data["occupation"]})

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        out = []
        for item, text in zip(items, outputs):
            ok, value = json_format(text)
            occupation = occupation_named(text, item.data["occupation"])
            out.append(Score({"format_accuracy": float(ok), "occupation_accuracy": float(occupation),
                              "pastalib_format_accuracy": float(pastalib_json_format(text)),
                              "pastalib_prediction_accuracy": float(
                                  pastalib_json_prediction(text, item.data["occupation"]))},
                             {"occupation_value": value} if ok else {}))
        return out


_NEUTRAL_FORM = {"he": "they", "she": "they", "him": "them", "his": "their", "hers": "theirs",
                 "himself": "themselves", "herself": "themselves"}


_NOT_NOUNS = {"for", "as", "to", "and", "with", "at", "in", "on", "from", "by", "about", "or", "but", "operate",
              "because", "when", "that", "is", "was"}


def neutral_pronouns(text: str) -> str:
    """``text`` with 'they' forms for 'he' and 'she' forms ('her' before a word is 'their', else 'them')."""
    def swap(m: re.Match) -> str:
        word = m.group(1)
        low = word.lower()
        following = re.match(r"\s+([a-z]+)", m.string[m.end():], re.I)
        possessive = following is not None and following.group(1).lower() not in _NOT_NOUNS
        new = ("their" if possessive else "them") if low == "her" else _NEUTRAL_FORM[low]
        return new.capitalize() if word[0].isupper() else new
    return re.sub(r"\b(he|she|him|his|hers|himself|herself|her)\b", swap, text, flags=re.I)


class PronounsStudy(_BiosStudy):
    name = "pronouns"
    config_class = PronounsConfig
    primary = "pronouns_changed_all"
    metrics = ("pronouns_changed_all", "pronouns_changed_he_she", "occupation_accuracy",
               "pastalib_pronoun_accuracy", "pastalib_all_changed_accuracy")

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        return Segments(before=item.data["text"] + "\n\n", focus=pronouns_instruction(item.data["name"]), after="")

    def profile_target(self, item: Item) -> str | None:
        return neutral_pronouns(item.data["text"])

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        out = []
        for item, text in zip(items, outputs):
            share_all, share_subject = pronoun_shares(text)
            subject_ok, all_ok = pastalib_pronouns(text)
            out.append(Score({"pronouns_changed_all": share_all, "pronouns_changed_he_she": share_subject,
                              "occupation_accuracy": float(occupation_named(text, item.data["occupation"])),
                              "pastalib_pronoun_accuracy": float(subject_ok),
                              "pastalib_all_changed_accuracy": float(all_ok)}))
        return out


class BiasInBiosStudy(_BiosStudy):
    name = "bios"
    config_class = BiosConfig
    primary = "accuracy"
    metrics = ("accuracy", "pastalib_accuracy")
    model_metrics = ("pastalib_accuracy",)

    def items(self, data: Any, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        # pastalib's candidates: every occupation of the evaluated data
        candidates = sorted({r["occupation"] for r in data})
        return [Item(r["id"], {**r, "candidates": candidates}, {"occupation": r["occupation"]}) for r in data]

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        parts = sentences(item.data["text"])
        first, rest = parts[0], " ".join(parts[1:])
        return Segments(before="", focus=first, after=(" " + rest if rest else "")
                        + f"\n\n{item.data['name']} has the occupation of")

    def profile_target(self, item: Item) -> str | None:
        return item.data["occupation"]

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        return [Score({"accuracy": float(occupation_named(text, item.data["occupation"]))})
                for item, text in zip(items, outputs)]

    def model_scores(self, items: Sequence[Item], config: ExperimentConfig,
                     scorer: Callable[[Item, Sequence[str]], list[float]]) -> list[dict[str, float]]:
        """``pastalib_accuracy``: each candidate occupation's first token, scored as the answer's first token."""
        from .counterfact import first_token_logprob

        out = []
        for item in items:
            candidates = item.data["candidates"]
            read = scorer(item, candidates)
            logprobs = {c: first_token_logprob(v) for c, v in zip(candidates, read)}
            out.append({"pastalib_accuracy": float(pastalib_top1(logprobs, item.data["occupation"]))})
        return out

    def extra_outputs(self, rows: Sequence[Mapping[str, Any]], out: Path, config: ExperimentConfig) -> list[Path]:
        from .summary import group_table

        return [group_table(rows, "occupation", self.metrics, out / "by_occupation.csv", config)]
