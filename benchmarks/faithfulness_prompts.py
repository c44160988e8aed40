"""Print prompts for the faithfulness comparison: sentences of the shipped passages, each without its last word.

    python benchmarks/faithfulness_prompts.py 100 > prompts.txt
    attnlens faithfulness --input prompts.txt --json > faithfulness.json
"""

from __future__ import annotations

import json
import re
import sys
from importlib.resources import files

# the passages the faithfulness prompts are drawn from: the first 61, so published tables reproduce
from attnlens.experiments.faithfulness import FAITHFULNESS_PASSAGES


def prompts(n: int) -> list[str]:
    per_passage = []
    text = files("attnlens.experiments").joinpath("data/summarize_passages.jsonl").read_text(encoding="utf-8")
    for line in [line for line in text.splitlines() if line.strip()][:FAITHFULNESS_PASSAGES]:
        sentences = re.split(r"(?<=[.!?])\s+", json.loads(line)["text"])
        per_passage.append([" ".join(s.split()[:-1]) for s in sentences if len(s.split()) >= 8])
    # every passage's first sentence first, then the second ones, ..., so a small n still spans the passages
    out = [p[i] for i in range(max(map(len, per_passage))) for p in per_passage if i < len(p)]
    return out[:n]


if __name__ == "__main__":
    for p in prompts(int(sys.argv[1]) if len(sys.argv) > 1 else 100):
        print(p)
