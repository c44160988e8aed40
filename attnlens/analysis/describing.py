"""AttentionData's chat-model part: ask a chat model what heads attend to, one head or many, as a sweep.

:class:`Describing` is mixed into :class:`~attnlens.analysis.attention_data.AttentionData`,
which captures, ranks and samples the patterns; this part builds nothing of its
own: it takes the samples and prompts AttentionData makes and sends them through
one loop (:meth:`Describing._ask`), the same with and without ``sweep_dir``, so the
client's ``deadline`` bounds every request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Union

from tqdm.auto import tqdm

from ..core.errors import AttnlensError, DescribeError
from ..core.validate import LayerSpec, is_int, resolve_layers
from ..runtime.distributed import current_workers, run_sweep, worker_group
from .descriptions import HeadDescription, HeadDescriptions, complete, make_client

logger = logging.getLogger(__name__)

HeadSpec = Union[str, int, Iterable[int]]


def _positive_count(name: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        raise AttnlensError(f"{name} must be a positive integer, got {value!r}")
    return value


class Describing:
    """Describing heads with a chat model (a mixin: AttentionData gives the samples, prompts and records)."""

    # set by AttentionData
    client: Any
    openai_api_key: str | None
    openai_model: str | None
    system_prompt: str | None
    deadline: float
    heads: dict[tuple[int, int], Any]
    n_layers: int

    def _client(self) -> Any:
        if self.client is None:
            self.client = make_client(self.openai_api_key)
        return self.client

    def _model_name(self) -> str:
        if not self.openai_model:
            raise DescribeError(
                "openai_model is not set: pass AttentionData(..., openai_model='gpt-4o-mini') "
                "or the name of the local server's model"
            )
        return self.openai_model

    def describe_head(
        self,
        layer: int = 0,
        head: int = 0,
        num_samples: int = 10,
        custom_prompt: str | None = None,
        print_description: bool = True,
        held_out: Sequence[str] | None = None,
    ) -> tuple[str, str]:
        """Ask the chat model what the head attends to; returns ``(prompt, description)``.

        The prompt is :data:`PROMPT_PREFIX`, ``num_samples`` random rows (see
        :meth:`format_samples`), ``custom_prompt`` and :data:`PROMPT_SUFFIX`; it goes
        with the system message through ``client.chat.completions.create``. The
        description is kept in ``heads[(layer, head)].descriptions``.

        ``held_out`` (texts the describer never saw): the description is also scored on them,
        beside a control (another head's description), by :meth:`score_head`; the result is
        kept in ``heads[(layer, head)].scores``.

        ``print_description=True`` shows it, headed by its layer and head: as Markdown
        output in a notebook, else printed to standard output (``attnlens.AttentionData``;
        this base class logs it at INFO).

        Raises:
            DescribeError: no key, a rejected key (401), an unknown model (404), or
                failures left after the client's retries (429, 5xx, timeouts).
        """
        model_name = self._model_name()
        data = self.head_data(layer, head)
        samples = self._head_samples(data.layer, data.head, num_samples)
        prompt = self.build_prompt(samples, custom_prompt)
        answer = complete(self._client(), model_name, prompt, system=self.system_prompt, deadline=self.deadline)
        data.prompts.append(prompt)
        data.descriptions.append(answer.text)
        if print_description:
            self.display_description(data.layer, data.head, answer.text)
        if held_out is not None:
            self.score_head(data.layer, data.head, held_out, description=answer.text)
        return prompt, answer.text

    def score_head(self, layer: int, head: int, held_out: Sequence[str], *, description: str | None = None,
                   control: str | None = None, control_head: tuple[int, int] | None = None,
                   queries_per_text: int = 3) -> dict[str, Any]:
        """Score a description of head ``(layer, head)`` on ``held_out`` texts, beside a control.

        ``description``: default the head's latest. The control is ``control`` (another head's
        description), else a new description of ``control_head`` (default: the next head of the
        layer). Returns (and keeps in ``heads[(layer, head)].scores``) ``{"description", "score",
        "control", "control_score", "how", "queries"}``; see :mod:`attnlens.analysis.description_scores`.
        """
        from .description_scores import score_description

        data = self.head_data(layer, head)
        if description is None:
            if not data.descriptions:
                raise AttnlensError(f"layer {layer} head {head} has no description to score; describe it first")
            description = data.descriptions[-1]
        if control is None:
            other = control_head if control_head is not None else (data.layer, (data.head + 1) % self.n_heads)
            if tuple(other) == (data.layer, data.head):
                raise AttnlensError("the control head must be another head")
            other_data = self.head_data(*other)
            control = other_data.descriptions[-1] if other_data.descriptions else self.describe_head(
                *other, print_description=False)[1]
        kwargs = {"client": self._client() if self.openai_model else None, "openai_model": self.openai_model,
                  "system_prompt": self.system_prompt, "deadline": self.deadline,
                  "queries_per_text": queries_per_text, "first_query": self.first_query,
                  "max_length": self.max_length, "seed": self.seed or 0}
        main = score_description(self.model, data.layer, data.head, description, held_out, **kwargs)
        ctrl = score_description(self.model, data.layer, data.head, control, held_out, **kwargs)
        result = {"description": description, "score": main.score, "control": control, "control_score": ctrl.score,
                  "how": main.how, "queries": main.queries}
        data.scores.append(result)
        logger.info("layer %d head %d: held-out score %.3f (control %.3f)", data.layer, data.head, main.score,
                    ctrl.score)
        return result

    def _scored(self, rows: HeadDescriptions, held_out: Sequence[str] | None) -> HeadDescriptions:
        """``rows`` with held-out scores; each head's control is the next row's description."""
        if held_out is None:
            return rows
        from dataclasses import replace

        described = [r for r in rows if r.ok and r.description]
        out = []
        for row in rows:
            if not (row.ok and row.description) or len(described) < 2:
                out.append(row)
                continue
            i = described.index(row)
            control = described[(i + 1) % len(described)].description
            result = self.score_head(row.layer, row.head, held_out, description=row.description, control=control)
            out.append(replace(row, score=result["score"], control_score=result["control_score"]))
        return HeadDescriptions(out)

    def describe_heads(
        self,
        layers: LayerSpec = "all",
        heads: HeadSpec = "all",
        num_samples: int = 10,
        custom_prompt: str | None = None,
        max_concurrency: int = 4,
        progress: bool = True,
        sweep_dir: str | os.PathLike | None = None,
        num_multiples: int = 20,
        held_out: Sequence[str] | None = None,
    ) -> HeadDescriptions:
        """Describe many heads: ``layers`` x ``heads``, at most ``max_concurrency`` requests at once.

        Patterns of a layer's heads come from one forward pass; samples are drawn
        in (layer, head) order, so a seed makes the prompts reproducible. A
        failure that retrying cannot fix (no key, 401, 404, unreachable server)
        stops everything and raises; other failures (429 or 5xx left after the
        client's retries) are logged and recorded in the row's ``error``.

        ``sweep_dir`` runs it as a resumable sweep with one unit per layer: each layer's
        rows (description, prompt, error and the ``num_multiples`` highest multiples of each
        head) are appended to ``sweep_dir/descriptions.jsonl`` as the layer finishes, and a
        rerun skips the layers on disk. Samples are then drawn per head (seeded by ``seed``,
        layer and head), so any split of the layers gives the same prompts. Under
        ``torchrun`` the workers split the layers and rank 0 merges their files; every
        worker returns every row. Needed (and shared by the workers) when ``WORLD_SIZE`` > 1.

        ``held_out``: texts the describer never saw; every description is scored on them
        (``score``) beside the next row's description as a control (``control_score``);
        see :meth:`score_head`. Needs two described heads or more.
        """
        _positive_count("max_concurrency", max_concurrency)
        _positive_count("num_samples", num_samples)
        model_name = self._model_name()
        layer_list = resolve_layers(layers, self.n_layers)
        if not layer_list:
            raise AttnlensError(f"layers={layers!r} selects no layer")
        head_list = self._resolve_heads(heads)
        if sweep_dir is None and current_workers().distributed:
            raise AttnlensError("describe_heads on several workers needs sweep_dir: a directory every worker can write")
        if sweep_dir is not None:
            _positive_count("num_multiples", num_multiples)
            return self._scored(self._describe_sweep(layer_list, head_list, num_samples, custom_prompt,
                                                     max_concurrency, Path(sweep_dir).expanduser(), num_multiples,
                                                     progress), held_out)
        pairs = [(layer, head) for layer in layer_list for head in head_list]
        self._ensure({layer: head_list for layer in layer_list})
        prompts = {}
        for layer, head in pairs:
            samples = self._head_samples(layer, head, num_samples)
            prompts[(layer, head)] = self.build_prompt(samples, custom_prompt)
        client = self._client()
        with tqdm(total=len(pairs), desc="describing heads", disable=not progress, delay=2) as bar:
            answers = self._ask(client, model_name, prompts, max_concurrency, bar.update)
        return self._scored(HeadDescriptions([HeadDescription(layer, head, answers[(layer, head)][0],
                                                              prompts[(layer, head)], answers[(layer, head)][1])
                                              for layer, head in pairs]), held_out)

    def _ask(self, client: Any, model_name: str, prompts: dict[tuple[int, int], str], max_concurrency: int,
             done: Any = None) -> dict[tuple[int, int], tuple[str | None, str | None]]:
        """The one describing loop (with and without ``sweep_dir``): every prompt sent, at most
        ``max_concurrency`` at once, each bounded by the client's ``deadline``.

        Returns ``{(layer, head): (description, error)}``; keeps each description on its head's
        record. A fatal failure (no key, 401, 404, unreachable server) cancels the rest and raises;
        others are logged and returned as the row's error.
        """
        results: dict[tuple[int, int], tuple[str | None, str | None]] = {}
        with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
            futures = {
                pool.submit(complete, client, model_name, prompt, system=self.system_prompt,
                            deadline=self.deadline): pair for pair, prompt in prompts.items()
            }
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    layer, head = futures[future]
                    exc = future.exception()
                    if isinstance(exc, DescribeError) and not exc.fatal:
                        logger.warning("layer %d head %d: %s", layer, head, exc)
                        results[(layer, head)] = (None, str(exc))
                    elif exc is not None:
                        for other in pending:
                            other.cancel()
                        raise exc
                    else:
                        text = future.result().text
                        record = self.heads[(layer, head)]
                        record.prompts.append(prompts[(layer, head)])
                        record.descriptions.append(text)
                        results[(layer, head)] = (text, None)
                    if done is not None:
                        done(1)
        return results

    def _describe_sweep(self, layers: Sequence[int], heads: tuple[int, ...], num_samples: int,
                        custom_prompt: str | None, max_concurrency: int, out: Path, num_multiples: int,
                        progress: bool) -> HeadDescriptions:
        model_name = self._model_name()
        client = self._client()
        # a unit on disk counts only for the same settings (a changed setting reruns its layers)
        settings = hashlib.sha256(json.dumps(
            [list(heads), num_samples, custom_prompt, self.seed, model_name, self.system_prompt, num_multiples,
             [list(r.ids) for r in self._rows], self.min_length, self.suppress_first_token]
        ).encode()).hexdigest()[:12]

        def compute(layer: int) -> list[dict[str, Any]]:
            self._ensure({layer: heads})
            prompts = {}
            for head in heads:
                data = self.heads[(layer, head)]
                k = self._clamp("num_samples", num_samples, len(data.samples), f"rows for layer {layer} head {head}")
                rng = random.Random(f"{self.seed}|{layer}|{head}")
                samples = [data.samples[i] for i in sorted(rng.sample(range(len(data.samples)), k))]
                prompts[head] = self.build_prompt(samples, custom_prompt)
            answers = self._ask(client, model_name, {(layer, head): prompts[head] for head in heads},
                                max_concurrency)
            rows = []
            for head in heads:
                text, error = answers[(layer, head)]
                ranked = self.ranked_multiples(layer, head)[:num_multiples]
                rows.append({
                    "layer": layer, "head": head, "description": text, "prompt": prompts[head], "error": error,
                    "multiples": [[m.token, m.multiple, m.text_index, m.query, m.key] for m in ranked],
                })
            return rows

        with worker_group() as workers, tqdm(total=len(layers), desc="describing layers", delay=2,
                                             disable=not progress) as bar:
            rows = run_sweep(list(layers), lambda layer: f"L{layer}/{settings}", compute, out / "descriptions.jsonl",
                             workers=workers, progress=bar.update)
        wanted = {(layer, head) for layer in layers for head in heads}
        found = {(r["layer"], r["head"]): r for r in rows if (r.get("layer"), r.get("head")) in wanted}
        return HeadDescriptions([
            HeadDescription(layer, head, found[(layer, head)]["description"], found[(layer, head)]["prompt"],
                            found[(layer, head)]["error"])
            for layer in layers for head in heads
        ])
