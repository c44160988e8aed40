"""CounterFact, after the PASTA paper: a new fact in the context contradicts what the model knows.

The prompt is "Previously, OLD FACT. Currently, NEW FACT." then a question whose
answer is the fact's object; the new fact is the focus. Metrics per item:

- ``efficacy``: 1 when the new object is more probable than the old one as the
  answer to the question (mean log-probability per token of each, read from the
  model under the condition's steering);
- ``paraphrase``: the same for a paraphrased question (with the same context);
- ``generation``: 1 when the generated answer names the new object and not the
  old one;
- ``pastalib_efficacy``: as pastalib scores it, 1 when the new object's first
  token is more probable than the old object's as the answer's first token;
- ``pastalib_paraphrase``: the same averaged over all of the fact's paraphrased
  questions (CounterFact records have two; the shipped facts one).

pastalib's CounterFact generation scores (fluency: the n-gram entropy of nltk
tokens; consistency: TF-IDF similarity to ROME's reference texts about the new
object) need nltk and those reference files, and are not computed.

The shipped facts (``data/counterfact.jsonl``) were written for attnlens: 127
true facts (capitals, official languages, landmarks, continents, musicians'
instruments, companies' home countries) each paired with a false object.
``--dataset`` takes records in that shape (``old_fact``, ``new_fact``,
``question``, ``paraphrase``, ``old``, ``new``) or in the CounterFact data
set's own shape (``requested_rewrite`` with ``prompt``, ``subject``,
``target_true`` and ``target_new``, and ``paraphrase_prompts``); see docs/studies.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ExperimentError
from .config import ExperimentConfig
from .metrics import contains_answer, pastalib_efficacy
from .sources import check_unique_ids, data_file, is_local, read_records
from .study import Item, Score, Segments, Study

logger = logging.getLogger(__name__)

FACTS_FILE = "counterfact.jsonl"
_FIELDS = ("old_fact", "new_fact", "question", "old", "new")


@dataclass
class CounterFactConfig(ExperimentConfig):
    """:class:`ExperimentConfig` with the CounterFact study's defaults."""

    max_new_tokens: int = 24


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def from_counterfact(record: dict[str, Any], n: int) -> dict[str, Any]:
    """A record of the CounterFact data set's shape in this study's shape."""
    rewrite = record["requested_rewrite"]
    try:
        prompt = rewrite["prompt"].format(rewrite["subject"])
        old, new = rewrite["target_true"]["str"], rewrite["target_new"]["str"]
    except (KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ExperimentError(f"fact {n}: 'requested_rewrite' lacks {exc} (needs prompt, subject, "
                              "target_true.str, target_new.str)") from None
    paraphrases = list(dict.fromkeys(record.get("paraphrase_prompts") or [prompt]))
    return {"id": str(record.get("case_id", record.get("id", f"cf{n + 1:03d}"))), "old": old, "new": new,
            "old_fact": f"{prompt} {old}", "new_fact": f"{prompt} {new}", "question": prompt,
            "paraphrase": paraphrases[0], "paraphrases": paraphrases, "relation": rewrite.get("relation_id", "")}


def load_facts(config: ExperimentConfig) -> list[dict[str, Any]]:
    if config.dataset is None:
        records = read_records(data_file(FACTS_FILE))
    elif is_local(config.dataset):
        records = read_records(Path(config.dataset).expanduser())
    else:
        raise ExperimentError(
            f"the counterfact study reads facts from a local .jsonl or .json file; {config.dataset!r} is not one "
            f"(each record: {', '.join(_FIELDS)}, paraphrase; or CounterFact's requested_rewrite records)"
        )
    out = []
    for n, r in enumerate(records):
        if "requested_rewrite" in r:
            r = from_counterfact(r, n)
        missing = [f for f in _FIELDS if not isinstance(r.get(f), str) or not r[f].strip()]
        if missing:
            raise ExperimentError(f"fact {n} has no {', '.join(repr(m) for m in missing)}")
        if r["old"].strip().lower() == r["new"].strip().lower():
            raise ExperimentError(f"fact {n}: the old and new objects are the same ({r['old']!r})")
        paraphrases = r.get("paraphrases")
        if paraphrases is not None and not (isinstance(paraphrases, list) and paraphrases
                                            and all(isinstance(p, str) and p.strip() for p in paraphrases)):
            raise ExperimentError(f"fact {n}: 'paraphrases' must be a non-empty list of questions")
        out.append({**r, "id": str(r.get("id", f"cf{n + 1:03d}")), "paraphrase": r.get("paraphrase") or r["question"]})
    check_unique_ids(out, f"the counterfact study's data ({config.dataset or 'shipped'})")
    return out[: config.limit] if config.limit else out


class CounterFactStudy(Study):
    name = "counterfact"
    config_class = CounterFactConfig
    primary = "efficacy"
    metrics = ("efficacy", "paraphrase", "generation", "pastalib_efficacy", "pastalib_paraphrase")
    model_metrics = ("efficacy", "paraphrase", "pastalib_efficacy", "pastalib_paraphrase")
    group_fields = ("relation",)

    def load_data(self, config: ExperimentConfig) -> list[dict[str, Any]]:
        return load_facts(config)

    def items(self, data: Any, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        return [Item(r["id"], r, {"relation": r.get("relation", "")}) for r in data]

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        d = item.data
        question = d.get("_ask", d["question"])
        return Segments(before=f"Previously, {_sentence(d['old_fact'])} Currently, ",
                        focus=_sentence(d["new_fact"]),
                        after=f"\n{question}")

    def profile_target(self, item: Item) -> str | None:
        return item.data["new"]

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        out = []
        for item, text in zip(items, outputs):
            new = contains_answer(text, [item.data["new"]])
            old = contains_answer(text, [item.data["old"]])
            out.append(Score({"generation": float(new and not old)}))
        return out

    def model_scores(self, items: Sequence[Item], config: ExperimentConfig,
                     scorer: Callable[[Item, Sequence[str]], list[float]]) -> list[dict[str, float]]:
        out = []
        for item in items:
            d = item.data
            read: dict[str, tuple[float, float]] = {}

            def ask(question: str) -> tuple[float, float]:
                if question not in read:
                    asked = dataclasses.replace(item, data={**d, "_ask": question})
                    new, old = scorer(asked, [d["new"], d["old"]])
                    read[question] = (new, old)
                return read[question]

            new, old = ask(d["question"])
            metrics = {"efficacy": float(new > old),
                       "pastalib_efficacy": pastalib_efficacy([first_token_logprob(new)], [first_token_logprob(old)])}
            new, old = ask(d["paraphrase"])
            metrics["paraphrase"] = float(new > old)
            pairs = [ask(q) for q in d.get("paraphrases") or [d["paraphrase"]]]
            metrics["pastalib_paraphrase"] = pastalib_efficacy([first_token_logprob(n) for n, _ in pairs],
                                                               [first_token_logprob(o) for _, o in pairs])
            out.append(metrics)
        return out


class ContinuationLogprob(float):
    """A continuation's mean log-probability per token (the float), with its first token's (``first``)."""

    first: float

    def __new__(cls, mean: float, first: float) -> ContinuationLogprob:
        value = super().__new__(cls, mean)
        value.first = float(first)
        return value


def first_token_logprob(value: float) -> float:
    """The first token's log-probability of a scorer's value (:class:`ContinuationLogprob`); a plain number
    (a scorer of one-token texts) is its own first token's."""
    return float(getattr(value, "first", value))


def continuation_logprobs(model: Any, prompt_ids: Sequence[int], plans: Sequence[Any], texts: Sequence[str],
                          *, leading_space: bool) -> list[float]:
    """The mean log-probability per token of each text as the continuation of ``prompt_ids``, under ``plans``
    (each a :class:`ContinuationLogprob`, whose ``first`` is its first token's log-probability).

    The plans bias prompt positions only; the continuation's keys are left as they are.
    """
    import torch

    from ..core.model import model_device
    from ..steering.bias import apply_bias

    tokenizer = model.tokenizer
    out = []
    for text in texts:
        ids = tokenizer.encode((" " if leading_space else "") + text.strip(), add_special_tokens=False)
        if not ids:
            raise ExperimentError(f"{text!r} has no tokens")
        full = torch.tensor([list(prompt_ids) + list(ids)], device=model_device(model))
        with ExitStack() as stack, torch.no_grad():
            for plan in plans:
                stack.enter_context(apply_bias(model, plan))
            logits = model(full)
        logprobs = logits[0, len(prompt_ids) - 1 : -1].float().log_softmax(-1)
        target = torch.tensor(ids, device=logprobs.device).unsqueeze(-1)
        per_token = logprobs.gather(-1, target)
        out.append(ContinuationLogprob(float(per_token.mean()), float(per_token[0])))
    return out
