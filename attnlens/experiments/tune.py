"""Choosing a steering method's strength on the user's own examples.

:func:`tune_strength` splits the examples into a development part and a
held-out part (a seeded shuffle), generates the development part at every
strength of a grid (the method's :attr:`~attnlens.steering.SteeringMethod.strength_grid`
by default), and keeps the strength with the best mean score among those that
pass a guard: a strength whose outputs repeat themselves (the mean share of
repeated word trigrams, :func:`repetition_rate`, above ``max_repetition`` and
above the unsteered model's own on the same examples) is never chosen, so a
strength that breaks the text cannot win on a lucky score, while a model that
loops without steering does not rule out every strength.
Ties go to the stronger strength. The chosen strength is then scored on the
held-out part, with a bootstrap interval, next to the unsteered model on the
same examples (the paired difference, with its interval).

``compare`` names more strengths (a paper's default, say) that are scored on
the same held-out part, each with its interval and paired difference from the
unsteered model, so a chosen strength can be read beside a fixed one.

With ``out`` (a JSON file) every strength's development result, and every
held-out score, is saved as it is measured and read back by a later call with
the same examples and settings, so an interrupted search resumes where it
stopped. ``cache`` (a dict the caller keeps) shares generated outputs between
searches: a prompt whose tokens and steering are the same is generated once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import AttnlensError
from ..core.records import Showable
from ..prompts.prompt import Prompt
from ..steering.registry import get

logger = logging.getLogger(__name__)

Score = Callable[[Mapping[str, Any], str], float]


def repetition_rate(text: str, n: int = 3) -> float:
    """The share of the word ``n``-grams of ``text`` that repeat an earlier one (0: none; near 1: a loop)."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


class NoValidStrength(AttnlensError):
    """Every strength searched breaks the text (its outputs repeat past the guard's bound)."""


@dataclass
class Trial:
    """One strength on the development examples."""

    strength: Any
    score: float
    repetition: float
    valid: bool


@dataclass
class Tuning(Showable):
    """A strength search's result: the chosen strength, every trial, and the held-out estimates.

    ``show()`` / ``view()``: the trials and the held-out estimate as tables; ``to_json()``."""

    method: str
    parameter: str
    chosen: Any
    trials: list[Trial]
    heldout: dict[str, float] = field(default_factory=dict)  # mean, low, high, n at the chosen strength
    unsteered: dict[str, float] = field(default_factory=dict)
    difference: dict[str, float] = field(default_factory=dict)  # chosen - unsteered, paired by example
    dev: list[int] = field(default_factory=list)
    test: list[int] = field(default_factory=list)
    #: the ``compare`` strengths on the held-out part: ``{"strength", "heldout", "difference"}`` each
    compared: list[dict[str, Any]] = field(default_factory=list)
    #: the guard's bound on the development outputs' repetition (the larger of ``max_repetition`` and the
    #: unsteered model's own), and the unsteered model's repetition there
    bound: float = 0.5
    unsteered_repetition: float = 0.0
    #: the unsteered model's mean score on the development examples
    unsteered_score: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def below_unsteered(self) -> bool:
        """Whether the chosen strength scored below the unsteered model on the development examples: no
        strength tried (that passes the guard) helped there."""
        best = [t.score for t in self.trials if t.valid and t.strength == self.chosen]
        return bool(best) and best[0] < self.unsteered_score

    @property
    def tied(self) -> int:
        """How many valid strengths share the best development score (the chosen one is the strongest of
        them); above 1 the search did not tell them apart."""
        valid = [t.score for t in self.trials if t.valid]
        return sum(score == max(valid) for score in valid) if valid else 0

    @property
    def at_strongest(self) -> bool:
        """Whether the chosen strength is the strongest one tried (the grid's last): a stronger one
        might score higher still, so the search may not have gone far enough."""
        return bool(self.trials) and self.chosen == self.trials[-1].strength and len(self.trials) > 1

    def view(self, **options: Any) -> Any:
        from ..viz import HTMLView, table_view

        trials = table_view([asdict(t) for t in self.trials], f"{self.method}: {self.parameter} search",
                            caption=f"mean score on n = {len(self.dev)} development examples; chosen: "
                                    f"{self.chosen!r} (valid: repetition at most {self.bound:.3f}, the larger of "
                                    f"the limit and the unsteered model's {self.unsteered_repetition:.3f})")
        named = [("chosen", self.heldout), ("unsteered", self.unsteered), ("chosen - unsteered", self.difference)]
        for other in self.compared:
            named += [(f"{self.parameter}={other['strength']}", other["heldout"]),
                      (f"{self.parameter}={other['strength']} - unsteered", other["difference"])]
        rows = [{"": name, **values} for name, values in named if values]
        held = table_view(rows, "", caption=f"held out: n = {len(self.test)} examples; mean with its interval "
                                             "(low, high); the difference is paired by example")
        return HTMLView(trials.body + "\n" + held.body, title=trials.title, data={"trials": trials.data["rows"],
                                                                                    "heldout": rows})


def _outputs(model: Any, prompts: Sequence[Any], steer: Mapping[str, Any], *, max_new_tokens: int,
             chat: bool, cache: MutableMapping[str, str] | None = None) -> list[str]:
    """Greedy outputs of ``prompts`` under ``steer``; with ``cache``, a prompt already generated under the
    same steering (same token ids, spans and settings) is read back instead of generated again."""
    from ..api import chain

    prepared = [p if isinstance(p, Prompt) else chain.prepare(model.tokenizer, p, chat=chat) for p in prompts]
    # without steering the spans change nothing: prompts that differ only in their tags share an entry
    keys = [json.dumps([list(map(int, p.input_ids)), [(s.kind, s.start, s.end, s.level, s.delta) for s in p.spans]
                        if steer else [], dict(steer), max_new_tokens], default=str) for p in prepared]
    todo = [i for i, k in enumerate(keys) if cache is None or k not in cache]
    if todo:
        rows = [prepared[i] for i in todo]
        plans = chain.plans_for(model, rows, steer=dict(steer))
        tokens = chain.generate(model, rows, plans, max_new_tokens=max_new_tokens, progress=False)
        texts = [model.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
        if cache is None:
            return texts
        for i, text in zip(todo, texts):
            cache[keys[i]] = text
    return [cache[k] for k in keys]  # type: ignore[index]


def _identity(prompt: Any) -> Any:
    """What identifies a prompt in the saved search: a prepared one by its tokens and spans."""
    if isinstance(prompt, Prompt):
        return [list(map(int, prompt.input_ids)), [(s.kind, s.start, s.end, s.level) for s in prompt.spans]]
    return prompt


def _scores(examples: Sequence[Mapping[str, Any]], outputs: Sequence[str], score: Score) -> list[float]:
    out = []
    for example, text in zip(examples, outputs):
        value = score(example, text)
        try:
            out.append(float(value))
        except (TypeError, ValueError):
            raise AttnlensError(f"the score function must return a number, got {value!r}") from None
    return out


def tune_strength(
    model: Any,
    examples: Sequence[Mapping[str, Any]],
    method: str,
    score: Score,
    *,
    grid: Sequence[Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    heldout: float = 0.5,
    max_repetition: float = 0.5,
    max_new_tokens: int = 32,
    chat: bool = False,
    seed: int = 0,
    confidence: float = 0.95,
    out: str | Path | None = None,
    compare: Sequence[Any] = (),
    cache: MutableMapping[str, str] | None = None,
    require_valid: bool = True,
) -> Tuning:
    """Search ``method``'s strength on ``examples`` (dicts with a ``"prompt"``, tags choosing the spans;
    a prompt may be a chat, a list of messages, with ``chat=True``, or a prepared
    :class:`~attnlens.prompts.prompt.Prompt`, used as it is).

    ``score(example, output) -> float`` (higher is better); ``grid``: the
    strengths to try (default: the method's); ``settings``: its other
    parameters; ``heldout``: the share of examples kept for the final estimate;
    ``max_repetition``: the guard's bound on :func:`repetition_rate`; ``out``: a
    JSON file the search saves to and resumes from; ``compare``: more strengths
    scored on the held-out part beside the chosen one (e.g. the method's
    :attr:`~attnlens.steering.SteeringMethod.paper_strength`); ``cache``: a dict
    of generated outputs shared between calls; ``require_valid=False``: when
    every strength breaks the text, return a result with ``chosen=None`` (the
    ``compare`` strengths still scored) instead of raising :class:`NoValidStrength`.
    """
    from .metrics import bootstrap_ci
    from .store import write_atomic

    steerer = get(method)
    if steerer.strength is None:
        raise AttnlensError(f"steering method {steerer.name!r} has no strength to search")
    values = list(grid if grid is not None else steerer.strength_grid)
    if not values:
        raise AttnlensError(f"no strengths to search for {steerer.name!r}: pass grid")
    base = dict(settings or {})
    # every strength checked (and converted: "2" from the command line is 2.0) before anything runs
    values = [steerer.settings({**base, steerer.strength: v})[steerer.strength] for v in values]
    others = [steerer.settings({**base, steerer.strength: v})[steerer.strength] for v in compare]
    if not callable(score):
        raise AttnlensError("score must be a function score(example, output) -> number")
    examples = list(examples)
    if any(not isinstance(e, Mapping) or not isinstance(e.get("prompt"), (str, list, Prompt)) for e in examples):
        raise AttnlensError("every example must be a mapping with a 'prompt' (a string, a chat of messages, or a "
                            "prepared Prompt)")
    if not 0.0 < heldout < 1.0:
        raise AttnlensError(f"heldout must be a share in (0, 1), got {heldout!r}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    cut = int(round(len(order) * (1 - heldout)))
    dev, test = sorted(order[:cut]), sorted(order[cut:])
    if not dev or not test:
        raise AttnlensError(f"{len(examples)} example(s) cannot be split into a development and a held-out part; "
                            "give at least two")

    key = hashlib.sha256(json.dumps([steerer.name, base, [_identity(examples[i]["prompt"]) for i in order], seed,
                                     max_new_tokens, chat, max_repetition], default=str).encode()).hexdigest()[:16]
    saved: dict[str, Any] = {}
    held: dict[str, list[float]] = {}  # held-out scores per steering, by example
    path = Path(out).expanduser() if out is not None else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise AttnlensError(f"cannot read the saved search {str(path)!r}: {exc}") from None
        if stored.get("key") == key:
            saved = stored.get("trials", {})
            held = stored.get("heldout_scores", {})
            logger.info("resuming the strength search from %s (%d strengths done)", path, len(saved))
        else:
            logger.info("%s holds another search; starting again", path)

    def save() -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, json.dumps({"key": key, "method": steerer.name, "trials": saved,
                                           "heldout_scores": held}, indent=1))

    dev_examples = [examples[i] for i in dev]
    dev_prompts = [e["prompt"] for e in dev_examples]
    if "none" not in saved:  # the unsteered model's own repetition on the same items
        outputs = _outputs(model, dev_prompts, {}, max_new_tokens=max_new_tokens, chat=chat, cache=cache)
        saved["none"] = {"score": sum(_scores(dev_examples, outputs, score)) / len(outputs),
                         "repetition": sum(repetition_rate(o) for o in outputs) / len(outputs)}
        save()
    # a strength breaks the text when it repeats more than the bound and more than the unsteered model does
    bound = max(max_repetition, saved["none"]["repetition"])
    trials = []
    for v in values:
        name = json.dumps(v)
        if name not in saved:
            steer = {steerer.name: {**base, steerer.strength: v}}
            outputs = _outputs(model, dev_prompts, steer, max_new_tokens=max_new_tokens, chat=chat, cache=cache)
            scores = _scores(dev_examples, outputs, score)
            rep = sum(repetition_rate(o) for o in outputs) / len(outputs)
            saved[name] = {"score": sum(scores) / len(scores), "repetition": rep}
            save()
        result = saved[name]
        trials.append(Trial(v, result["score"], result["repetition"], result["repetition"] <= bound))
        logger.info("%s %s=%s: score %.4f, repetition %.3f", steerer.name, steerer.strength, v,
                    result["score"], result["repetition"])
    valid = [t for t in trials if t.valid]
    if not valid and require_valid:
        raise NoValidStrength(f"every strength of {steerer.name} breaks the text (repetition above {bound:.3f}: "
                              f"max_repetition, or the unsteered model's own {saved['none']['repetition']:.3f} if "
                              "higher); try weaker strengths or a higher max_repetition")
    chosen = None
    if valid:
        best = max(t.score for t in valid)
        chosen = [t for t in valid if t.score == best][-1].strength  # ties: the stronger (later in the grid)

    test_examples = [examples[i] for i in test]
    prompts = [e["prompt"] for e in test_examples]

    def heldout_scores(strength: Any) -> list[float]:
        name = "none" if strength is None else json.dumps(strength)
        if name not in held:
            steer = {} if strength is None else {steerer.name: {**base, steerer.strength: strength}}
            held[name] = _scores(test_examples, _outputs(model, prompts, steer, max_new_tokens=max_new_tokens,
                                                         chat=chat, cache=cache), score)
            save()
        return held[name]

    plain = heldout_scores(None)

    def estimates(strength: Any) -> tuple[dict[str, float], dict[str, float]]:
        steered = heldout_scores(strength)
        diff = [a - b for a, b in zip(steered, plain)]
        return (asdict(bootstrap_ci(steered, confidence=confidence, seed=seed)),
                asdict(bootstrap_ci(diff, confidence=confidence, seed=seed)))

    estimate, difference = estimates(chosen) if chosen is not None else ({}, {})
    compared = [dict(zip(("strength", "heldout", "difference"), (v, *estimates(v)))) for v in others]
    result = Tuning(steerer.name, steerer.strength, chosen, trials, estimate,
                    asdict(bootstrap_ci(plain, confidence=confidence, seed=seed)), difference, dev, test, compared,
                    bound, saved["none"]["repetition"], saved["none"]["score"])
    if path is not None:
        stored = {"key": key, "method": steerer.name, "trials": saved, "heldout_scores": held,
                  "result": result.as_dict()}
        write_atomic(path, json.dumps(stored, indent=1, default=str))
    return result
