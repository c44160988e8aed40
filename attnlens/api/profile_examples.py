"""Examples for head profiling: the schema (:class:`ProfileExample`), a JSONL reader, and a generated set.

``prompt`` may be a chat (a list of ``{"role", "content"}``); ``emphasize`` a
string or a list of strings; an optional ``occurrence`` picks a repeated one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..core.errors import AttnlensError
from ..core.records import read_jsonl
from ..core.validate import is_int
from ..prompts.prompt import is_chat

@dataclass(frozen=True)
class ProfileExample:
    """One task example: the prompt, what to emphasise in it, and the completion wanted."""

    prompt: Union[str, tuple[Mapping[str, str], ...]]
    emphasize: tuple[str, ...]
    target: str
    occurrence: int | None = 0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "example") -> "ProfileExample":
        if not isinstance(data, Mapping):
            raise AttnlensError(f"{where}: expected an object with 'prompt', 'emphasize' and 'target'")
        missing = [k for k in ("prompt", "emphasize", "target") if k not in data]
        if missing:
            raise AttnlensError(f"{where}: missing field(s) {', '.join(missing)}")
        prompt = data["prompt"]
        if not isinstance(prompt, str) and not is_chat(prompt):
            raise AttnlensError(f"{where}: 'prompt' must be a string or a list of {{'role', 'content'}} messages")
        emphasize = data["emphasize"]
        if isinstance(emphasize, str):
            emphasize = [emphasize]
        if (
            not isinstance(emphasize, Sequence)
            or not emphasize
            or not all(isinstance(e, str) and e for e in emphasize)
        ):
            raise AttnlensError(f"{where}: 'emphasize' must be a non-empty string or list of strings")
        target = data["target"]
        if not isinstance(target, str) or not target:
            raise AttnlensError(f"{where}: 'target' must be a non-empty string")
        occurrence = data.get("occurrence", 0)
        if occurrence is not None and (not is_int(occurrence)):
            raise AttnlensError(f"{where}: 'occurrence' must be an integer or null")
        prompt = prompt if isinstance(prompt, str) else tuple(dict(m) for m in prompt)
        return cls(prompt, tuple(emphasize), target, occurrence)

    def as_dict(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        return {"prompt": prompt, "emphasize": list(self.emphasize), "target": self.target,
                "occurrence": self.occurrence}


def load_examples(path: str | os.PathLike) -> list[ProfileExample]:
    """Read examples from a JSONL file (``prompt``, ``emphasize``, ``target`` per line)."""
    file = Path(path).expanduser()
    examples = [ProfileExample.from_dict(row, where) for where, row in read_jsonl(file, what="examples")]
    if not examples:
        raise AttnlensError(f"{str(file)!r} holds no example")
    return examples


def _examples(examples: Any) -> list[ProfileExample]:
    if isinstance(examples, (str, os.PathLike)):
        return load_examples(examples)
    if isinstance(examples, (ProfileExample, Mapping)):
        examples = [examples]
    out = []
    for i, ex in enumerate(examples):
        out.append(ex if isinstance(ex, ProfileExample) else ProfileExample.from_dict(ex, f"example {i}"))
    if not out:
        raise AttnlensError("no examples given")
    return out


_NAMES = ("Mary", "John", "Aisha", "Carlos", "Mei", "Olga", "Tom", "Priya", "Lucas", "Sara", "Kenji", "Nora",
          "Ahmed", "Elena", "David", "Fatima")
_JOBS = ("doctor", "teacher", "lawyer", "nurse", "architect", "pilot", "chef", "journalist", "dentist", "engineer",
         "painter", "pharmacist", "photographer", "accountant", "farmer", "librarian")
_SCHOOLS = ("UCSD", "MIT", "Oxford", "Stanford", "ETH Zurich", "the University of Tokyo", "McGill", "Harvard")


def json_format_examples(n: int = 16) -> list[ProfileExample]:
    """A small built-in task in the example format: a short biography, an instruction to answer
    in JSON (emphasised), and the JSON answer as the target."""
    if not is_int(n) or n < 1:
        raise AttnlensError(f"n must be a positive integer, got {n!r}")
    out = []
    for i in range(n):
        name, job = _NAMES[i % len(_NAMES)], _JOBS[(i * 7) % len(_JOBS)]
        school = _SCHOOLS[i % len(_SCHOOLS)]
        pronoun = ("She", "her") if i % 2 == 0 else ("He", "his")
        instruction = f"Answer the occupation of {name} and generate the answer as json format"
        prompt = (f"{name} is a {job}. {pronoun[0]} obtains {pronoun[1]} bachelor degree from {school}. "
                  f"{instruction}.")
        out.append(ProfileExample(prompt, (instruction,), json.dumps({"occupation": job})))
    return out
