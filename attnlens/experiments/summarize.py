"""Summarize in French: English passages, the instruction "Summarize in French."

Metrics per output: ``french`` (1 when the output is detected as French),
``similarity`` (sentence-embedding cosine to the passage) and, with
``bertscore=True``, ``bertscore`` (BERTScore F1 against the passage; needs the
network once). A passage may carry a ``reference`` summary: outputs are then
also compared with it (``similarity_reference``). Rows also record the
detected language and the instruction's influence at the last prompt token,
so accuracy can be related to influence.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .metrics import bertscore_f1, detect_language, require_bertscore, semantic_similarity
from ..core.errors import ExperimentError
from .config import ExperimentConfig
from .study import Item, Score, Segments, Study
from .sources import check_unique_ids, data_file, hf_texts, is_local, passages, read_records, read_text, truncate_words

logger = logging.getLogger(__name__)

INSTRUCTION = "Summarize in French."
PASSAGES_FILE = "summarize_passages.jsonl"


@dataclass
class SummarizeConfig(ExperimentConfig):
    """:class:`ExperimentConfig` plus the summarisation study's settings."""

    max_new_tokens: int = 128
    instruction: str = INSTRUCTION
    passage_words: int = 250  # passages from a data set are cut to this many words (whole sentences)
    bertscore: bool = False


class SummarizeStudy(Study):
    name = "summarize"
    config_class = SummarizeConfig
    primary = "french"
    metrics = ("french", "similarity")

    def load_data(self, config: ExperimentConfig) -> list[dict[str, Any]]:
        if getattr(config, "bertscore", False):
            require_bertscore()
        limit = config.limit
        if config.dataset is None:
            records = read_records(data_file(PASSAGES_FILE))
        elif is_local(config.dataset):
            path = Path(config.dataset).expanduser()
            if path.suffix == ".txt":
                paragraphs = passages(read_text(path))
                records = [{"id": f"p{i + 1:03d}", "text": p} for i, p in enumerate(paragraphs)]
            else:
                records = read_records(path)
        else:
            words = getattr(config, "passage_words", 250)
            texts = hf_texts(config.dataset, split=config.dataset_split, field=config.text_field,
                             count=limit or 50, min_words=40)
            records = [{"id": f"d{i + 1:03d}", "text": truncate_words(t, words)} for i, t in enumerate(texts)]
        for n, record in enumerate(records):
            if not isinstance(record.get("text"), str) or not record["text"].strip():
                raise ExperimentError(f"passage {n} has no 'text'")
            record.setdefault("id", f"p{n + 1:03d}")
        check_unique_ids(records, f"the summarize study's data ({config.dataset or 'shipped'})")
        return records[:limit] if limit else records

    def data_fingerprints(self, data: Any) -> dict[str, str]:
        from .store import fingerprint

        return {f"item {r['id']}": fingerprint(r) for r in data}

    def items(self, data: Any, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        return [Item(str(r["id"]), r) for r in data]

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        instruction = getattr(config, "instruction", None) or INSTRUCTION
        return Segments(before="", focus=instruction, after="\n\n" + item.data["text"])

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        passages = [i.data["text"] for i in items]
        sims = semantic_similarity(outputs, passages)
        refs = [i.data.get("reference") for i in items]
        ref_sims: list[float | None] = [None] * len(items)
        have = [k for k, r in enumerate(refs) if isinstance(r, str) and r.strip()]
        if have:
            values = semantic_similarity([outputs[k] for k in have], [refs[k] for k in have])
            for k, v in zip(have, values):
                ref_sims[k] = v
        berts: list[float | None] = [None] * len(items)
        if getattr(config, "bertscore", False):
            berts = list(bertscore_f1(outputs, passages, lang="fr"))
        scores = []
        for out, sim, ref_sim, bert in zip(outputs, sims, ref_sims, berts):
            lang = detect_language(out)
            metrics: dict[str, float] = {"french": float(lang == "fr"), "similarity": sim}
            if ref_sim is not None:
                metrics["similarity_reference"] = ref_sim
            if bert is not None:
                metrics["bertscore"] = bert
            scores.append(Score(metrics, {"language": lang}))
        return scores

    def metric_names(self, config: ExperimentConfig) -> tuple[str, ...]:
        return self.metrics + (("bertscore",) if getattr(config, "bertscore", False) else ())

    def extra_outputs(self, rows: Sequence[Mapping[str, Any]], out: Path, config: ExperimentConfig) -> list[Path]:
        if not config.plots:
            return []
        from .plots import influence_vs_accuracy

        path = influence_vs_accuracy(rows, "french", out / "influence_vs_accuracy.html",
                                     title="summarize: instruction influence vs French output",
                                     confidence=config.confidence, resamples=config.bootstrap, seed=config.seed)
        return [path] if path else []
