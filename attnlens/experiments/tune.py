"""Choosing a steering method's strength on the user's own examples.

:func:`tune_strength` splits the examples into a development part and a
held-out part (a seeded shuffle), generates the development part at every
strength of a grid (the grid of the method's profile by default,
:meth:`attnlens.experiments.profiles.Profile.grid`), and keeps the strength with the best mean score among those that
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
from ..core.resumable import RunRecord, changed
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

    from .schedule import output_key

    prepared = [p if isinstance(p, Prompt) else chain.prepare(model.tokenizer, p, chat=chat) for p in prompts]
    keys = [output_key(p, steer, max_new_tokens) for p in prepared]
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


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:16]


def _model_digest(model: Any) -> str | None:
    """The model's content digest (config and weights), so a search saved for one model (or dtype) is never
    resumed for another; None for no model."""
    if model is None:
        return None
    from .schedule import model_digest

    return model_digest(model)


def _example_identity(example: Mapping[str, Any]) -> Any:
    """An example's prompt and everything else it holds (the answers a score reads), as saved-search identity."""
    others = {k: v for k, v in example.items() if k != "prompt"}
    return [_identity(example["prompt"]), _digest(others) if others else None]


def _strengths(steerer: Any, base: Mapping[str, Any], grid: Sequence[Any] | None,
               compare: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The grid's strengths and the compared ones, each checked (and converted: "2" from the command line is
    2.0) by the method before anything runs."""
    from .profiles import profile

    policy = profile(steerer)
    strength = policy.strength
    if strength is None:
        raise AttnlensError(f"steering method {steerer.name!r} has no strength to search: its profile names none "
                            "(register an attnlens.experiments.profiles.Profile with strength=PARAMETER)")
    values = list(grid if grid is not None else policy.grid())
    if not values:
        raise AttnlensError(f"no strengths to search for {steerer.name!r}: pass grid (its profile has no "
                            f"strength_grid and its {strength} parameter no default)")
    return ([steerer.settings({**base, strength: v})[strength] for v in values],
            [steerer.settings({**base, strength: v})[strength] for v in compare])


def _checked_examples(examples: Sequence[Mapping[str, Any]], score: Score, heldout: float,
                      max_repetition: float) -> list[Mapping[str, Any]]:
    """The examples as a list, with the score function, the held-out share and the guard checked."""
    if not callable(score):
        raise AttnlensError("score must be a function score(example, output) -> number")
    examples = list(examples)
    if any(not isinstance(e, Mapping) or not isinstance(e.get("prompt"), (str, list, Prompt)) for e in examples):
        raise AttnlensError("every example must be a mapping with a 'prompt' (a string, a chat of messages, "
                            "or a prepared Prompt)")
    if not 0.0 < heldout < 1.0:
        raise AttnlensError(f"heldout must be a share in (0, 1), got {heldout!r}")
    if isinstance(max_repetition, bool) or not isinstance(max_repetition, (int, float)) \
            or not 0.0 <= max_repetition <= 1.0:
        raise AttnlensError(f"max_repetition must be a share of repeated word trigrams in [0, 1], got "
                            f"{max_repetition!r}")
    return examples


class Search:
    """One strength search, in steps a caller can interleave with others (:func:`tune_strength` runs them
    in order): :meth:`requests` lists the outputs a step needs (to generate them beforehand, e.g. as one
    stream with other searches), :meth:`develop` scores the development part, :meth:`finish` the held-out one."""

    def __init__(self, model: Any, examples: Sequence[Mapping[str, Any]], method: str, score: Score, *,
                 grid: Sequence[Any] | None = None, settings: Mapping[str, Any] | None = None,
                 heldout: float = 0.5, max_repetition: float = 0.5, max_new_tokens: int = 32, chat: bool = False,
                 seed: int = 0, confidence: float = 0.95, out: str | Path | None = None,
                 compare: Sequence[Any] = (), cache: MutableMapping[str, str] | None = None,
                 require_valid: bool = True, identity: Mapping[str, Any] | None = None) -> None:
        steerer = get(method)
        base = dict(settings or {})
        self.values, self.others = _strengths(steerer, base, grid, compare)
        examples = _checked_examples(examples, score, heldout, max_repetition)
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        cut = int(round(len(order) * (1 - heldout)))
        self.dev, self.test = sorted(order[:cut]), sorted(order[cut:])
        if not self.dev or not self.test:
            raise AttnlensError(f"{len(examples)} example(s) cannot be split into a development and a held-out "
                                "part; give at least two")
        self.model, self.examples, self.steerer, self.score, self.base = model, examples, steerer, score, base
        from .profiles import profile

        self.strength: str = profile(steerer).strength  # type: ignore[assignment]  # _strengths checked it
        self.max_repetition, self.max_new_tokens, self.chat, self.seed = max_repetition, max_new_tokens, chat, seed
        self.confidence, self.cache, self.require_valid = confidence, cache, require_valid
        # what the saved scores depend on: the model (its config and weights, dtype included), the prompts
        # and the answers the score reads (each example's other fields), the settings, and what the caller
        # names (the metric)
        self.identity = {"model": _model_digest(model),
                         "examples": _digest([_example_identity(examples[i]) for i in order]),
                         **{k: v for k, v in (identity or {}).items()}}
        self.key = hashlib.sha256(json.dumps([steerer.name, base, self.identity, seed, max_new_tokens, chat,
                                              max_repetition], sort_keys=True, default=str).encode()
                                  ).hexdigest()[:16]
        self.saved: dict[str, Any] = {}
        self.held: dict[str, list[float]] = {}  # held-out scores per steering, by example
        self.path = Path(out).expanduser() if out is not None else None
        self._resume()
        self.chosen: Any = None
        self.trials: list[Trial] = []

    def _record(self) -> RunRecord | None:
        if self.path is None:
            return None
        return RunRecord(self.path, what="the saved search's scores", kind="saved search",
                         advice="delete it to search again, or save the search elsewhere")

    def _resume(self) -> None:
        """Read back the saved search when it was made with the same examples and settings (its key)."""
        record = self._record()
        stored = record.read() if record is not None else None
        if stored is None:
            return
        if stored.get("key") == self.key:
            self.saved = stored.get("trials", {})
            self.held = stored.get("heldout_scores", {})
            logger.info("resuming the strength search from %s (%d strengths done)", self.path, len(self.saved))
            return
        was = stored.get("identity") or {}
        diff = changed(was, self.identity)
        logger.warning("%s holds another search (%s); its scores are not used and the search starts "
                       "again", self.path, "changed: " + ", ".join(diff) if diff and was
                       else "other examples or settings")

    # ---------------------------------------------------------------- what the steps need
    def steer(self, strength: Any) -> dict[str, Any]:
        return {} if strength is None else {self.steerer.name: {**self.base, self.strength: strength}}

    def prompts(self, part: str) -> list[Any]:
        return [self.examples[i]["prompt"] for i in (self.dev if part == "dev" else self.test)]

    def requests(self, *, chosen: bool = False) -> list[tuple[str, list[Any], dict[str, Any]]]:
        """``(part, prompts, steer)`` for every output not saved yet: the development part at every strength
        and unsteered, and the held-out part unsteered and at each compared strength; with ``chosen``
        (after :meth:`develop`), the held-out part at the chosen strength."""
        out = []
        if not chosen:
            for strength in (None, *self.values):
                if ("none" if strength is None else json.dumps(strength)) not in self.saved:
                    out.append(("dev", self.prompts("dev"), self.steer(strength)))
        for strength in ((self.chosen,) if chosen and self.chosen is not None else (None, *self.others)):
            if ("none" if strength is None else json.dumps(strength)) not in self.held:
                out.append(("test", self.prompts("test"), self.steer(strength)))
        return out

    def _generate(self, prompts: Sequence[Any], steer: Mapping[str, Any]) -> list[str]:
        return _outputs(self.model, prompts, steer, max_new_tokens=self.max_new_tokens, chat=self.chat,
                        cache=self.cache)

    def save(self, result: Tuning | None = None) -> None:
        record = self._record()
        if record is None:
            return
        stored: dict[str, Any] = {"key": self.key, "identity": self.identity, "method": self.steerer.name,
                                  "trials": self.saved, "heldout_scores": self.held}
        if result is not None:
            stored["result"] = result.as_dict()
        record.write(stored, default=str)

    # ---------------------------------------------------------------- the steps
    def develop(self) -> Any:
        """Score every strength on the development part; returns the chosen strength (None: none valid)."""
        steerer, saved = self.steerer, self.saved
        dev_examples = [self.examples[i] for i in self.dev]
        if "none" not in saved:  # the unsteered model's own repetition on the same items
            outputs = self._generate(self.prompts("dev"), {})
            saved["none"] = {"score": sum(_scores(dev_examples, outputs, self.score)) / len(outputs),
                             "repetition": sum(repetition_rate(o) for o in outputs) / len(outputs)}
            self.save()
        # a strength breaks the text when it repeats more than the bound and more than the unsteered model does
        bound = max(self.max_repetition, saved["none"]["repetition"])
        self.trials = []
        for v in self.values:
            name = json.dumps(v)
            if name not in saved:
                outputs = self._generate(self.prompts("dev"), self.steer(v))
                scores = _scores(dev_examples, outputs, self.score)
                rep = sum(repetition_rate(o) for o in outputs) / len(outputs)
                saved[name] = {"score": sum(scores) / len(scores), "repetition": rep}
                self.save()
            result = saved[name]
            self.trials.append(Trial(v, result["score"], result["repetition"], result["repetition"] <= bound))
            logger.info("%s %s=%s: score %.4f, repetition %.3f", steerer.name, self.strength, v,
                        result["score"], result["repetition"])
        valid = [t for t in self.trials if t.valid]
        if not valid and self.require_valid:
            raise NoValidStrength(f"every strength of {steerer.name} breaks the text (repetition above "
                                  f"{bound:.3f}: max_repetition, or the unsteered model's own "
                                  f"{saved['none']['repetition']:.3f} if higher); try weaker strengths or a higher "
                                  "max_repetition")
        self.chosen = None
        if valid:
            best = max(t.score for t in valid)
            self.chosen = [t for t in valid if t.score == best][-1].strength  # ties: the stronger (later in the grid)
        return self.chosen

    def heldout_scores(self, strength: Any) -> list[float]:
        name = "none" if strength is None else json.dumps(strength)
        if name not in self.held:
            test_examples = [self.examples[i] for i in self.test]
            self.held[name] = _scores(test_examples, self._generate(self.prompts("test"), self.steer(strength)),
                                      self.score)
            self.save()
        return self.held[name]

    def finish(self) -> Tuning:
        """The held-out estimates of the chosen strength and each compared one (after :meth:`develop`)."""
        from .metrics import bootstrap_ci

        confidence, seed = self.confidence, self.seed
        plain = self.heldout_scores(None)

        def estimates(strength: Any) -> tuple[dict[str, float], dict[str, float]]:
            steered = self.heldout_scores(strength)
            diff = [a - b for a, b in zip(steered, plain)]
            return (asdict(bootstrap_ci(steered, confidence=confidence, seed=seed)),
                    asdict(bootstrap_ci(diff, confidence=confidence, seed=seed)))

        estimate, difference = estimates(self.chosen) if self.chosen is not None else ({}, {})
        compared = [dict(zip(("strength", "heldout", "difference"), (v, *estimates(v)))) for v in self.others]
        bound = max(self.max_repetition, self.saved["none"]["repetition"])
        result = Tuning(self.steerer.name, self.strength, self.chosen, self.trials, estimate,
                        asdict(bootstrap_ci(plain, confidence=confidence, seed=seed)), difference, self.dev,
                        self.test, compared, bound, self.saved["none"]["repetition"], self.saved["none"]["score"])
        self.save(result)
        return result


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
    identity: Mapping[str, Any] | None = None,
) -> Tuning:
    """Search ``method``'s strength on ``examples`` (dicts with a ``"prompt"``, tags choosing the spans;
    a prompt may be a chat, a list of messages, with ``chat=True``, or a prepared
    :class:`~attnlens.prompts.prompt.Prompt`, used as it is).

    ``score(example, output) -> float`` (higher is better); ``grid``: the
    strengths to try (default: its profile's grid); ``settings``: its other
    parameters; ``heldout``: the share of examples kept for the final estimate;
    ``max_repetition``: the guard's bound on :func:`repetition_rate` (in [0, 1]); ``out``: a
    JSON file the search saves to and resumes from; ``compare``: more strengths
    scored on the held-out part beside the chosen one (e.g. the method's
    profile's :meth:`~attnlens.experiments.profiles.Profile.reference_strength`); ``cache``: a dict
    of generated outputs shared between calls; ``require_valid=False``: when
    every strength breaks the text, return a result with ``chosen=None`` (the
    ``compare`` strengths still scored) instead of raising :class:`NoValidStrength`;
    ``identity``: what else the scores depend on (a metric's name, say), so a saved search
    made with something else is not resumed. A saved search is resumed only for the same
    examples (their prompts and every other field, such as the answers a score reads).
    """
    search = Search(model, examples, method, score, grid=grid, settings=settings, heldout=heldout,
                    max_repetition=max_repetition, max_new_tokens=max_new_tokens, chat=chat, seed=seed,
                    confidence=confidence, out=out, compare=compare, cache=cache, require_valid=require_valid,
                    identity=identity)
    search.develop()
    return search.finish()
