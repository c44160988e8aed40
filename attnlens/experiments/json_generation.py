"""JSON generation: records to turn into JSON objects with a given key schema.

The focus each condition emphasises is the format instruction. Metrics per
output: ``valid_json`` (a JSON object can be read from it), ``exact_format`` (the
output is that object alone, a code fence allowed, and it validates against the
record's JSON Schema: exactly the asked keys, with their types), ``key_jaccard``
(generated keys against schema keys) and ``value_accuracy`` (share of the
record's values reproduced).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .metrics import score_json
from ..core.errors import ExperimentError
from .config import ExperimentConfig
from .study import Item, Score, Segments, Study
from .sources import check_unique_ids, data_file, is_local, read_records

logger = logging.getLogger(__name__)

RECORDS_FILE = "json_records.jsonl"
SCHEMAS_FILE = "json_schemas.json"


@dataclass
class JSONConfig(ExperimentConfig):
    """:class:`ExperimentConfig` with the JSON study's defaults."""

    max_new_tokens: int = 96


@dataclass(frozen=True)
class JSONData:
    records: list[dict[str, Any]]
    schemas: dict[str, dict[str, Any]]


def instruction(schema: Mapping[str, Any]) -> str:
    keys = ", ".join(schema.get("properties", {}))
    return f"Answer with only a JSON object that has exactly these keys: {keys}."


class JSONStudy(Study):
    name = "json"
    config_class = JSONConfig
    primary = "exact_format"
    metrics = ("valid_json", "exact_format", "key_jaccard", "value_accuracy")
    group_fields = ("schema",)

    def load_data(self, config: ExperimentConfig) -> JSONData:
        schemas = json.loads(data_file(SCHEMAS_FILE).read_text(encoding="utf-8"))
        if config.dataset is None:
            records = read_records(data_file(RECORDS_FILE))
        elif is_local(config.dataset):
            records = read_records(Path(config.dataset).expanduser())
        else:
            raise ExperimentError(
                f"the json study reads records from a local .jsonl or .json file; {config.dataset!r} is not one "
                "(each record: text, schema (a name or a JSON Schema), optional expected values)"
            )
        for n, r in enumerate(records):
            if not isinstance(r.get("text"), str):
                raise ExperimentError(f"record {n} has no 'text'")
            schema = r.get("schema")
            if isinstance(schema, str):
                if schema not in schemas:
                    raise ExperimentError(f"record {n}: unknown schema {schema!r} (known: {', '.join(schemas)})")
            elif not (isinstance(schema, dict) and isinstance(schema.get("properties"), dict)):
                raise ExperimentError(f"record {n}: 'schema' must be a schema name or a JSON Schema with properties")
            r.setdefault("id", f"r{n + 1:03d}")
        check_unique_ids(records, f"the json study's data ({config.dataset or 'shipped'})")
        if config.limit:
            records = records[: config.limit]
        return JSONData(records, schemas)

    def data_fingerprints(self, data: JSONData) -> dict[str, str]:
        from .store import fingerprint

        return {"schemas": fingerprint(data.schemas), **{f"item {r['id']}": fingerprint(r) for r in data.records}}

    def items(self, data: JSONData, config: ExperimentConfig, tokenizer: Any) -> list[Item]:
        items = []
        for r in data.records:
            schema = r["schema"]
            name = schema if isinstance(schema, str) else "custom"
            resolved = data.schemas[schema] if isinstance(schema, str) else schema
            items.append(Item(str(r["id"]), {**r, "schema": resolved}, {"schema": name}))
        return items

    def segments(self, item: Item, config: ExperimentConfig) -> Segments:
        return Segments(
            before="Turn the record below into JSON. ",
            focus=instruction(item.data["schema"]),
            after=f"\n\nRecord: {item.data['text']}",
        )

    def emphatic(self, focus: str) -> str:
        """``IMPORTANT:`` and upper case, except the key names, which must be copied as they are."""
        head, sep, keys = focus.strip().rpartition(": ")
        return f"IMPORTANT: {head.upper()}{sep}{keys}" if sep else super().emphatic(focus)

    def score(self, items: Sequence[Item], outputs: Sequence[str], config: ExperimentConfig) -> list[Score]:
        out = []
        for item, text in zip(items, outputs):
            s = score_json(text, item.data["schema"], item.data.get("expected"))
            details = {"keys": sorted(s.parsed)} if s.parsed is not None else {}
            out.append(Score(s.as_metrics(), details))
        return out
