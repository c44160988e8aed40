"""lm-evaluation-harness as a door: any lm-eval task scored with attnlens' steering.

:class:`AttnlensLM` is an lm-eval model backend (``lm_eval.api.model.LM``) registered as
``"attnlens"``. Its settings are the ``model_args``:

- ``steer``: the steering description every other door takes (``{"method": {settings}}``,
  a list, JSON text, ``@file.json`` or a method name; :mod:`attnlens.steering.description`).
  Without it, GUIDE steers the tags, as in the pipeline; ``steer=none`` steers nothing
  (the tags are still removed from the text), the unsteered baseline of the same task.
- ``emphasize``: substrings for the methods that steer emphasised text (PASTA), located in
  every request's context (JSON list, or one string).
- ``model``: a name for :func:`attnlens.load_model` (default: the embedded model), or a
  loaded model (Python only).
- ``batch_size`` and ``device``, which lm-eval passes from its own options.

Spans come from the text lm-eval builds: GUIDE tags (``<!-> ... <-!>``) written into a
task's ``doc_to_text`` (or its few-shot examples) are parsed from each request's context as
the pipeline parses a raw prompt, and ``emphasize`` adds located substrings. The steering
applies to the forward pass that scores: ``loglikelihood`` builds each method's steering for
the context (its positions are the context's, the continuation is never biased, as generated
tokens are not) and reads the continuation's log-probabilities under it; ``loglikelihood_rolling``
steers the tags of the scored text itself; ``generate_until`` generates with the same steering
and cuts at the stop strings. SPA, which mixes two passes' logits at every decoding step,
scores with those mixed logits (each continuation token is read from
``omega * f(prompt) + (1 - omega) * f(masked prompt)``). Contexts run unpadded, batched
``batch_size`` at a time among requests of one length, so every method sees exactly one
row per request.

Registration: lm-eval 0.4.13 finds models only in its own registry. Importing this module
makes ``AttnlensLM`` on first use and registers it (:func:`register`); ``python -m
attnlens.lm_eval ...`` does so before it runs lm-eval's command line, and the
``lm_eval.models`` entry point in attnlens' package metadata lets a release of lm-eval
that reads entry points find it without that step.
"""

from __future__ import annotations

import json
import logging
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Any

from ..core.errors import AttnlensError, SpanError
from ..core.model import check_window, context_window, model_device
from ..core.validate import is_int
from ..prompts.prompt import Prompt, TokenSpan, tokenize_prompt
from ..prompts.tags import parse_tags
from ..steering import description
from ..steering.edits import install
from ..steering.guide import with_strength
from ..steering.kinds import DecodingOverride
from ..steering.spa_method import SpaSteering, masked_rows, mix
from . import chain

logger = logging.getLogger(__name__)

#: the name lm-eval knows the backend by (``--model attnlens``)
NAME = "attnlens"
#: the ``model_args`` the backend takes (lm-eval adds ``batch_size``, ``max_batch_size`` and ``device``)
ARGS = ("model", "steer", "emphasize", "batch_size", "max_batch_size", "device")
#: the generation keywords of lm-eval's ``gen_kwargs`` that :meth:`AttnlensLM.generate_until` reads
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k", "repetition_penalty")
DEFAULT_MAX_GEN_TOKS = 256


class LmEvalArgsError(AttnlensError):
    """A bad ``model_args`` entry of the lm-eval backend; ``argument`` names it (``steer``, ``steer.guide``, ...)."""

    def __init__(self, message: str, argument: str) -> None:
        super().__init__(f"lm-eval model_args {argument}: {message}")
        self.argument = argument


@dataclass(frozen=True)
class Settings:
    """The backend's checked ``model_args``."""

    steer: dict[str, dict[str, Any]] | None
    emphasize: tuple[str, ...]
    batch_size: int


def read_settings(steer: Any = None, emphasize: Any = None, batch_size: Any = 1) -> Settings:
    """``steer``, ``emphasize`` and ``batch_size`` checked; each bad one is an :class:`LmEvalArgsError` naming it."""
    from .. import steering as registry

    parsed: dict[str, dict[str, Any]] | None = None
    if steer is not None:
        try:
            parsed = description.parse(steer, "steer")
        except description.DescriptionError as exc:
            message = str(exc)
            if message.startswith(f"{exc.where}: "):
                message = message[len(exc.where) + 2:]
            raise LmEvalArgsError(message, exc.where) from None
    if emphasize is None or emphasize == "":
        subs: tuple[str, ...] = ()
    else:
        value = emphasize
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise LmEvalArgsError(f"not a JSON list of substrings ({exc})", "emphasize") from None
        if isinstance(value, str):
            value = [value]
        if (not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(s, str) and s.strip() for s in value)):
            raise LmEvalArgsError(f"must be a non-empty substring or a list of them, got {emphasize!r}", "emphasize")
        subs = tuple(value)
    wants = [n for n in (parsed or {}) if registry.get(n).spans == "emphasis"]
    if wants and not subs:
        raise LmEvalArgsError(f"{' and '.join(wants)} steer(s) emphasised text: give the substrings in emphasize",
                              "emphasize")
    if subs and not wants:
        raise LmEvalArgsError("needs a steering method in steer that steers emphasised text (e.g. pasta)",
                              "emphasize")
    if isinstance(batch_size, str) and batch_size.startswith("auto"):
        batch_size = 8
        logger.info("batch_size=auto: scoring 8 requests at a time")
    if isinstance(batch_size, str) and batch_size.isdigit():
        batch_size = int(batch_size)
    if not is_int(batch_size) or batch_size < 1:
        raise LmEvalArgsError(f"must be a positive integer, got {batch_size!r}", "batch_size")
    return Settings(parsed, subs, int(batch_size))


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Scored:
    """One forward row to score: ``steer`` is the prompt the steering is built from (its positions are
    those of ``tokens``' first tokens); the log-probabilities of ``tokens[first:]`` are read."""

    steer: Prompt
    tokens: list[int]
    first: int


def _spa_parts(steerings: list[Any]) -> tuple[list[Any], SpaSteering | None]:
    """The steerings installed in the forward pass, and SPA's (scored through its mixed logits)."""
    spa = None
    rest = []
    for made in steerings:
        if isinstance(made, SpaSteering):
            spa = made
        elif isinstance(made, DecodingOverride):
            raise AttnlensError(f"steering method {made.name!r} runs the decoding steps itself: it cannot score a "
                                "log-likelihood (only generate_until works with it)")
        else:
            rest.append(made)
    return rest, spa


def score_rows(model: Any, rows: list[Scored], steer: dict[str, Any] | None, *,
               batch_size: int = 1) -> list[tuple[float, bool]]:
    """``(summed log-probability, greedy)`` of each row's scored tokens, under the steering ``steer``
    builds for the row's prompt. Rows run unpadded, ``batch_size`` at a time among rows of one length;
    ``steer`` is the pipeline's (None: GUIDE on the tags)."""
    import torch

    out: list[tuple[float, bool] | None] = [None] * len(rows)
    by_length: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_length.setdefault(len(row.tokens), []).append(i)
    device = model_device(model)
    for length, index in sorted(by_length.items()):
        for start in range(0, len(index), batch_size):
            chunk = index[start:start + batch_size]
            made, spa = _spa_parts(chain.plans_for(model, [rows[i].steer for i in chunk], steer=steer))
            # the last token is only scored, never read: the pass runs on the others
            tokens = torch.tensor([rows[i].tokens[:-1] for i in chunk], device=device)
            with ExitStack() as stack, torch.no_grad():
                for plan in made:
                    stack.enter_context(install(model, plan))
                logits = model(tokens).float()
                if spa is not None:
                    masked = model(masked_rows(tokens, spa.spans, spa.mask_token)).float()
                    logits = mix(logits, masked, spa.omega)
            logprobs = logits.log_softmax(-1)
            for r, i in enumerate(chunk):
                first = rows[i].first
                target = torch.tensor(rows[i].tokens[first:], device=logprobs.device)
                rows_lp = logprobs[r, first - 1 : length - 1]
                picked = rows_lp.gather(-1, target[:, None]).squeeze(-1)
                greedy = bool((rows_lp.argmax(-1) == target).all())
                out[i] = (float(picked.double().sum()), greedy)
    return [o for o in out if o is not None]


def _shift(prompt: Prompt, offset: int, start: int = 0, end: int | None = None) -> tuple[TokenSpan, ...]:
    """``prompt``'s spans moved by ``offset`` tokens, clipped to ``[start, end)`` of the new positions."""
    spans = []
    for s in prompt.spans:
        a = max(s.start + offset, start)
        b = s.end + offset if end is None else min(s.end + offset, end)
        if b > a:
            spans.append(replace(s, start=a - start, end=b - start))
    return tuple(spans)


# ----------------------------------------------------------------------------- the backend's work


def lm_eval_device(device: Any) -> str | None:
    """lm-eval's ``device`` for :func:`attnlens.load_model`: its command line always sends one (``cuda:0`` unless
    told), so a CUDA device on a machine without CUDA falls back to the default device with a warning, as
    lm-eval's own Hugging Face backend does."""
    if device is None:
        return None
    import torch

    name = str(device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("lm-eval asked for device %s, which this machine lacks: the model runs on the CPU", name)
        return None
    return name


class Backend:
    """What :class:`AttnlensLM` does, without lm-eval: a model, its steering and the three request kinds."""

    def __init__(self, model: Any = None, steer: Any = None, emphasize: Any = None, batch_size: Any = 1,
                 max_batch_size: Any = None, device: Any = None) -> None:
        self.settings = read_settings(steer, emphasize, batch_size)
        if model is None or isinstance(model, str):
            from ..runtime.models import load_model

            if isinstance(model, str) and not model.strip():
                raise LmEvalArgsError("is empty: give a model name or leave it out for the embedded model", "model")
            device = lm_eval_device(device)
            logger.info("lm-eval backend: loading %s", model or "the embedded model")
            model = load_model(model or None, device=device)
        elif device is not None and lm_eval_device(device) not in (None, str(model_device(model))):
            raise LmEvalArgsError(f"the loaded model is on {model_device(model)}; it stays there (leave device out)",
                                  "device")
        if getattr(model, "tokenizer", None) is None:
            raise LmEvalArgsError(f"the model ({type(model).__name__}) has no tokenizer", "model")
        self.model = model
        self.tokenizer = model.tokenizer
        self.window = context_window(model)
        logger.info("lm-eval backend: steering %s%s", self.described(),
                    f", emphasizing {list(self.settings.emphasize)}" if self.settings.emphasize else "")

    def described(self) -> str:
        steer = self.settings.steer
        if steer is None:
            return "GUIDE on the tags (the default)"
        return json.dumps(steer) if steer else "nothing (steer=none)"

    # -------------------------------------------------------------- prompts

    def prompt(self, text: str, what: str) -> Prompt:
        """``text`` (tags parsed, as the pipeline reads a raw prompt) with its emphasised substrings."""
        prompt = with_strength(tokenize_prompt(self.tokenizer, text, raw=True), 1.0)
        if self.settings.emphasize:
            try:
                prompt = chain.with_emphasis(self.tokenizer, prompt, text, list(self.settings.emphasize), chat=False)
            except SpanError as exc:
                raise LmEvalArgsError(f"{exc} (in {what})", "emphasize") from None
        return prompt

    def _prefix(self) -> int:
        for attr in ("bos_token_id", "eos_token_id"):
            value = getattr(self.tokenizer, attr, None)
            if value is not None:
                return int(value)
        raise AttnlensError("the tokenizer has neither a BOS nor an EOS token to start an empty context with")

    def pair(self, context: str, continuation: str, index: int) -> Scored:
        """The row that scores ``continuation`` after ``context`` (whose tags steer)."""
        if parse_tags(continuation).spans:
            raise AttnlensError(f"request {index}: the continuation {continuation!r} has tags; tags go in the "
                                "context (doc_to_text), the continuation is scored as written")
        stripped = context.rstrip()  # the space before a word belongs to the continuation, as lm-eval writes it
        continuation = context[len(stripped):] + continuation
        prompt = self.prompt(stripped, f"request {index}'s context")
        if not prompt.input_ids:
            prompt = replace(prompt, input_ids=[self._prefix()], spans=_shift(prompt, 1))
        n = len(prompt.input_ids)
        cont: list[int] = []
        if prompt.text:  # tokenized together, as lm-eval does, where the context's tokens stay a prefix
            whole = [int(t) for t in self.tokenizer(prompt.text + continuation, add_special_tokens=True)["input_ids"]]
            if whole[:n] == list(prompt.input_ids):
                cont = whole[n:]
        if not cont:
            cont = [int(t) for t in self.tokenizer(continuation, add_special_tokens=False)["input_ids"]]
        if not cont:
            raise AttnlensError(f"request {index}: the continuation {continuation!r} has no tokens")
        check_window(self.model, n + len(cont) - 1, what=f"request {index} (context and continuation)")
        return Scored(prompt, list(prompt.input_ids) + cont, n)

    def rolling(self, text: str, index: int) -> list[Scored]:
        """The rows that score every token of ``text`` once (after a BOS/EOS), each with the most context
        the window allows; the tags of ``text`` steer the rows they fall in."""
        prompt = self.prompt(text, f"request {index}")
        full = [self._prefix()] + list(prompt.input_ids)
        if len(full) < 2:
            raise AttnlensError(f"request {index}: the text has no tokens to score")
        size = self.window or len(full)
        out = []
        s = 1
        while s < len(full):
            e = min(len(full), s + size)
            a = max(0, e - 1 - size)
            spans = _shift(prompt, 1, a, e - 1)
            window = replace(prompt, input_ids=full[a:e - 1], spans=spans)
            out.append(Scored(window, full[a:e], s - a))
            s = e
        return out

    # -------------------------------------------------------------- the three request kinds

    def loglikelihood(self, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
        rows = [self.pair(c, x, i) for i, (c, x) in enumerate(pairs)]
        return score_rows(self.model, rows, self.settings.steer, batch_size=self.settings.batch_size)

    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        rows, owner = [], []
        for i, text in enumerate(texts):
            for row in self.rolling(text, i):
                rows.append(row)
                owner.append(i)
        scores = score_rows(self.model, rows, self.settings.steer, batch_size=self.settings.batch_size)
        totals = [0.0] * len(texts)
        for i, (value, _) in zip(owner, scores):
            totals[i] += value
        return totals

    def generation_kwargs(self, gen: dict[str, Any], index: int) -> tuple[tuple[str, ...], dict[str, Any]]:
        unknown = sorted(set(gen) - set(GEN_KWARGS))
        if unknown:
            raise AttnlensError(f"request {index}: unknown generation argument(s) {', '.join(unknown)}; the "
                                f"attnlens backend reads {', '.join(GEN_KWARGS)}")
        until = gen.get("until") or ()
        if isinstance(until, str):
            until = (until,)
        if not all(isinstance(u, str) for u in until):
            raise AttnlensError(f"request {index}: until must be a string or a list of strings, got {until!r}")
        kwargs: dict[str, Any] = {"max_new_tokens": gen.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)}
        temperature = gen.get("temperature")
        sample = bool(gen.get("do_sample", False)) and not (temperature is not None and temperature == 0)
        kwargs["do_sample"] = sample
        if sample:
            for key in ("temperature", "top_p", "top_k"):
                if gen.get(key) is not None:
                    kwargs[key] = gen[key]
        if gen.get("repetition_penalty") is not None:
            kwargs["repetition_penalty"] = gen["repetition_penalty"]
        return tuple(u for u in until if u), kwargs

    def generate_until(self, requests: list[tuple[str, dict[str, Any]]]) -> list[str]:
        out: list[str] = []
        for i, (context, gen) in enumerate(requests):  # one at a time: each request has its own stop strings
            until, kwargs = self.generation_kwargs(dict(gen or {}), i)
            prompt = self.prompt(context, f"request {i}'s context")
            if not prompt.input_ids:
                prompt = replace(prompt, input_ids=[self._prefix()], spans=_shift(prompt, 1))
            if self.window is not None:
                room = self.window - len(prompt.input_ids)
                check_window(self.model, len(prompt.input_ids), new_tokens=1, what=f"request {i}'s context")
                kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], room)
            plans = chain.plans_for(self.model, [prompt], steer=self.settings.steer)
            made: list[int] = []

            def stop(step: list[int], made: list[int] = made, until: tuple[str, ...] = until) -> list[bool]:
                made.append(step[0])
                return [bool(until) and any(u in self.tokenizer.decode(made) for u in until)]

            tokens = chain.generate(self.model, [prompt], plans, batch_size=1, progress=False, on_step=stop, **kwargs)
            text = self.tokenizer.decode(tokens[0], skip_special_tokens=True)
            cut = min((text.find(u) for u in until if u in text), default=len(text))
            out.append(text[:cut])
        return out

    def chat_text(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The chat as one string through the tokenizer's template (the tags inside stay, and steer)."""
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise AttnlensError("the model's tokenizer has no chat template: run without --apply_chat_template")
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)


# ----------------------------------------------------------------------------- lm-eval's side


def _lm_eval_base() -> Any:
    try:
        from lm_eval.api.model import LM
    except ImportError as exc:
        raise AttnlensError(
            f"the lm-eval backend needs lm-evaluation-harness ({exc}): pip install lm-eval "
            "(it is part of attnlens' test set, requirements.lock)"
        ) from None
    return LM


_CLASS: Any = None


def backend_class() -> Any:
    """``AttnlensLM``: the lm-eval model class (made on first use, when lm-eval is importable)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    LM = _lm_eval_base()

    class AttnlensLM(LM):
        """lm-eval's ``--model attnlens``: attnlens' model and steering behind lm-eval's LM interface.

        ``model_args``: ``steer`` (a steering description), ``emphasize``, ``model``; see
        :mod:`attnlens.api.lm_eval_backend`.
        """

        def __init__(self, model: Any = None, steer: Any = None, emphasize: Any = None, batch_size: Any = 1,
                     max_batch_size: Any = None, device: Any = None, **unknown: Any) -> None:
            super().__init__()
            if unknown:
                raise LmEvalArgsError(f"unknown argument(s) {', '.join(sorted(unknown))}; the attnlens backend "
                                      f"takes {', '.join(ARGS)}", sorted(unknown)[0])
            self.backend = Backend(model, steer, emphasize, batch_size, max_batch_size, device)
            self._device = model_device(self.backend.model)

        @property
        def steer(self) -> dict[str, dict[str, Any]] | None:
            """The steering every request gets (None: GUIDE on the tags)."""
            return self.backend.settings.steer

        @property
        def model(self) -> Any:
            return self.backend.model

        @property
        def tokenizer(self) -> Any:
            return self.backend.tokenizer

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            pairs = [tuple(r.args) for r in requests]
            results = self.backend.loglikelihood(pairs)  # type: ignore[arg-type]
            for args, res in zip(pairs, results):
                self.cache_hook.add_partial("loglikelihood", args, res)
            return results

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            texts = [r.args[0] for r in requests]
            results = self.backend.loglikelihood_rolling(texts)
            for r, res in zip(requests, results):
                self.cache_hook.add_partial("loglikelihood_rolling", r.args, res)
            return results

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            args = [tuple(r.args) for r in requests]
            results = self.backend.generate_until(args)  # type: ignore[arg-type]
            for a, res in zip(args, results):
                self.cache_hook.add_partial("generate_until", a, res)
            return results

        def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
            return self.backend.chat_text(chat_history, add_generation_prompt)

        @property
        def tokenizer_name(self) -> str:
            return str(getattr(self.tokenizer, "name_or_path", "attnlens")).replace("/", "__")

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            return getattr(self.tokenizer, "chat_template", None) or ""

    AttnlensLM.__module__ = __name__
    AttnlensLM.__qualname__ = "AttnlensLM"
    _CLASS = AttnlensLM
    register()
    return AttnlensLM


def register() -> Any:
    """Register the backend in lm-eval's model registry as ``"attnlens"`` (again: nothing changes); returns it."""
    cls = backend_class()
    from lm_eval.api.registry import model_registry

    current = model_registry.get(NAME, None) if NAME in model_registry else None
    if current is not cls:
        model_registry.register(NAME, target=cls)
    return cls


def __getattr__(name: str) -> Any:  # AttnlensLM is made when first asked for (lm-eval is imported then)
    if name == "AttnlensLM":
        return backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
