"""Verifiable instruction following: rules, then a request; every rule checked by a program.

Each prompt shows one to three rules (the focus), sometimes a long passage,
then a request; some requests tempt breaking a rule ("Do not use the word
'blue'" then "Describe the sky"; a password never to reveal, then a request for
it). The checks are :mod:`attnlens.experiments.instruction_checks` (25 kinds).
Metrics per prompt:

- ``prompt_strict``: 1 when every rule is followed (IFEval's prompt-level
  accuracy);
- ``instruction_level_strict``: the share of its rules followed, weighted in
  every summary by the prompt's number of rules, so the mean is the share of all
  rules followed (IFEval's instruction-level accuracy);
- ``prompt_share_strict``: the same share, each prompt counting once (the mean
  of per-prompt shares; this package's own, not IFEval's);
- ``prompt_loose``, ``instruction_level_loose`` and ``prompt_share_loose``: the
  same when a rule also counts as followed by the output without markdown
  asterisks or without its first or last line.

``per_kind.csv`` breaks the strict and loose rates down by kind of rule.
``--dataset`` takes records with ``request``, ``instructions`` (a list of
``{"kind": ..., arguments}``) and optional ``passage`` and ``rules`` (the rules'
text; written from the instructions when absent); see docs/studies.md.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import ExperimentError
from . import instruction_checks as checks
from .config import ExperimentConfig
from .metrics import bootstrap_ci
from .sources import check_unique_ids, data_file, is_local, read_records
from .study import Item, Score, Segments, Study

logger = logging.getLogger(__name__)

PROMPTS_FILE = "instructions.jsonl"


@dataclass
class InstructionsConfig(ExperimentConfig):
    """:class:`ExperimentConfig` with the instruction study's defaults."""

    max_new_tokens: int = 128


def rules_text(instructions: Sequence[Mapping[str, Any]]) -> str:
    return "Follow these rules in your answer:\n" + "\n".join(f"- {checks.rule_text(i)}" for i in instructions)


def score_instructions(output: str, instructions: Sequence[Mapping[str, Any]]) -> Score:
    """The accuracies of one output, which rules it followed, and the weight (its number of rules) of the
    instruction-level metrics, which summaries use to average over rules rather than prompts."""
    strict = [checks.check(output, i) for i in instructions]
    loose = [checks.check_loose(output, i) for i in instructions]
    share_strict, share_loose = sum(strict) / len(strict), sum(loose) / len(loose)
    metrics = {
        "prompt_strict": float(all(strict)), "instruction_level_strict": share_strict,
        "prompt_loose": float(all(loose)), "instruction_level_loose": share_loose,
        "prompt_share_strict": share_strict, "prompt_share_loose": share_loose,
    }
    weights = {"instruction_level_strict": len(instructions), "instruction_level_loose": len(instructions)}
    return Score(metrics, {"kinds": [i["kind"] for i in instructions], "strict": strict, "loose": loose,
                           "weights": weights})


def load_prompts(config: ExperimentConfig) -> list[dict[str, Any]]:
    if config.dataset is None:
        records = read_records(data_file(PROMPTS_FILE))
    elif is_local(config.dataset):
        records = read_records(Path(config.dataset).expanduser())
    else:
        raise ExperimentError(
            f"the instructions study reads prompts from a local .jsonl or .json file; {config.dataset!r} is not one "
            "(each record: request, instructions, optional passage and rules)"
        )
    out = []
    for n, r in enumerate(records):
        if not isinstance(r.get("request"), str) or not r["request"].strip():
            raise ExperimentError(f"prompt {n} has no 'request'")
        instructions = r.get("instructions")
        if not isinstance(instructions, list) or not instructions:
            raise ExperimentError(f"prompt {n}: 'instructions' must be a non-empty list of {{'kind': ...}} objects")
        instructions = [dict(i) if isinstance(i, Mapping) else i for i in instructions]
        for i in instructions:
            if isinstance(i, dict) and i.get("kind") == "repeat_request":
                i.setdefault("request", r["request"])
            try:
                checks.validate_instruction(i)
            except ExperimentError as exc:
                raise ExperimentError(f"prompt {n}: {exc}") from None
        passage = r.get("passage")
        if passage is not None and not isinstance(passage, str):
            raise ExperimentError(f"prompt {n}: 'passage' must be text")
        rules = r.get("rules") if isinstance(r.get("rules"), str) and r["rules"].strip() else rules_text(instructions)
        out.append({**r, "id": str(r.get("id", f"i{n + 1:03d}")), "instructions": instructions, "rules": rules})
    check_unique_ids(out, f"the instructions study's data ({config.dataset or 'shipped'})")
    return out[: config.limit] if config.limit else out


class InstructionsStudy(Study):
    name = "instructions"
    config_class = InstructionsConfig
    primary = "prompt_strict"
    metrics = ("prompt_strict", "instruction_level_strict", "prompt_loose", "instruction_level_loose",
               "prompt_share_strict", "prompt_share_loose")
    group_fields = ("tempting", "passage")

    def load_data(self, config: ExperimentConfig) -> list[dict[str, Any]]:
        return load_prompts(config)

    def items(self, data: Any, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        return [Item(r["id"], r, {"tempting": bool(r.get("tempting", False)), "passage": bool(r.get("passage"))})
                for r in data]

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        d = item.data
        passage = f"{d['passage'].strip()}\n\n" if d.get("passage") else ""
        return Segments(before="", focus=d["rules"], after=f"\n\n{passage}{d['request'].strip()}")

    def emphatic(self, focus: str) -> str:
        """``IMPORTANT:`` before the rules; their case is kept (rules quote words and phrases to copy)."""
        return "IMPORTANT: " + focus.strip()

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        return [score_instructions(text, item.data["instructions"]) for item, text in zip(items, outputs)]

    def extra_outputs(self, rows: Sequence[Mapping[str, Any]], out: Path, config: ExperimentConfig) -> list[Path]:
        from .store import write_csv

        path = out / "per_kind.csv"
        write_csv(path, per_kind(rows, config), ["condition", "kind", "n", "strict", "strict_low", "strict_high",
                                                 "loose", "loose_low", "loose_high"])
        return [path]


def per_kind(rows: Sequence[Mapping[str, Any]], config: ExperimentConfig) -> list[dict[str, Any]]:
    """Per (condition, kind of rule): how many rules of the kind were judged and the share followed."""
    found: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: {"strict": [], "loose": []})
    for row in rows:
        d = row.get("details") or {}
        for kind, strict, loose in zip(d.get("kinds", ()), d.get("strict", ()), d.get("loose", ())):
            found[(row["condition"], kind)]["strict"].append(float(strict))
            found[(row["condition"], kind)]["loose"].append(float(loose))
    table = []
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    for (condition, kind), values in sorted(found.items(), key=lambda kv: (conditions.index(kv[0][0]), kv[0][1])):
        line: dict[str, Any] = {"condition": condition, "kind": kind, "n": len(values["strict"])}
        for m in ("strict", "loose"):
            e = bootstrap_ci(values[m], confidence=config.confidence, resamples=config.bootstrap, seed=config.seed)
            line.update({m: round(e.mean, 4), f"{m}_low": round(e.low, 4), f"{m}_high": round(e.high, 4)})
        table.append(line)
    return table
