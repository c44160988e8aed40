"""ContextCite: a sparse linear surrogate of the target over random ablations of the prompt.

Cohen-Wang et al. (2024), "ContextCite: Attributing Model Generation to Context". The prompt is
cut into *sources* (each token, or each sentence with ``sources="sentence"``; a leading BOS is
never a source and always kept). ``ablations`` random masks keep each source with probability
``keep``; for each mask the target (the continuation, or the model's next token) is scored after
the ablated prompt, and a Lasso fitted to ``target ~ masks`` gives one weight per source: how much
keeping that source raises the target. A token's score is its source's weight (a leading BOS
scores 0).

Conventions, following the authors' ``context-cite`` package (read, not copied):

- **ablation by removal**: an ablated source's tokens are dropped from the prompt
  (``erase="drop"``), as the package rebuilds the context text without them; ``erase="replace"``
  puts the neutral token in their place instead (positions kept). Removal here is of tokens,
  not of text, so the kept tokens are never re-tokenized. The ablated rows, of different
  lengths, go through batched forward passes right-padded (a causal model's positions before
  the padding do not see it), so no attention mask is needed;
- **the regression target**: ``output="logit_prob"`` (the package's default) is the
  logit of the target's probability, ``log p - log(1 - p)`` with ``log p`` the summed
  log-probability of the target's tokens; ``output="log_prob"`` is ``log p`` itself. As in the
  package, the target is divided by the number of target tokens for the fit and the weights
  multiplied back;
- **the surrogate**: the package's ``Lasso(alpha=0.01)`` on standardized masks with an
  intercept, the weights rescaled to the masks' own units. scikit-learn is not a dependency of
  attnlens, so :func:`lasso` is a small coordinate-descent Lasso in numpy minimizing the same
  objective, ``1/(2n) ||y - b - X w||^2 + alpha ||w||_1`` (the tests compare it with
  scikit-learn's where that is installed);
- **64 ablations** by default (the package's default; the paper uses 32 to 256), keep
  probability 1/2, one seeded generator for every mask (``seed``), so the scores are
  deterministic for a seed.

The settings are the class's attributes; ``ContextCiteMethod(ablations=128, seed=1)`` makes one
with others (register it under another ``name``, or with ``replace=True``), and
``token_scores`` takes the same settings as keywords.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from ..core.errors import AttnlensError
from ..core.validate import is_int
from .registry import AttributionMethod, register
from .token_methods import ERASE_MODES, neutral_token
from .tokens import BATCH, Target, logprob_of, model_device, rows_per_pass

logger = logging.getLogger(__name__)

SOURCES = ("token", "sentence")
OUTPUTS = ("logit_prob", "log_prob")
#: the characters that end a sentence source (a token whose text, spaces stripped, ends with one)
SENTENCE_ENDS = (".", "!", "?", ";", ":")


def lasso(x: np.ndarray, y: np.ndarray, alpha: float, *, max_iter: int = 1000,
          tol: float = 1e-7) -> tuple[np.ndarray, float]:
    """``(weight, bias)`` of a Lasso fitted on standardized columns, in ``x``'s own units.

    Minimizes ``1/(2n) ||y - b - Xs w||^2 + alpha ||w||_1`` over ``w`` and ``b`` with ``Xs`` the
    columns of ``x`` centred and divided by their standard deviation (a constant column keeps
    weight 0), by cyclic coordinate descent until no weight moves more than ``tol``; the same
    model as scikit-learn's ``make_pipeline(StandardScaler(), Lasso(alpha))``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, p = x.shape
    mean, std = x.mean(0), x.std(0)
    live = std > 0
    xs = np.zeros_like(x)
    xs[:, live] = (x[:, live] - mean[live]) / std[live]
    y_mean = y.mean()
    r = y - y_mean  # the residual with w = 0
    w = np.zeros(p)
    norms = (xs ** 2).sum(0) / n
    for _ in range(max_iter):
        biggest = 0.0
        for j in np.flatnonzero(live):
            old = w[j]
            rho = xs[:, j] @ r / n + norms[j] * old
            new = math.copysign(max(abs(rho) - alpha, 0.0), rho) / norms[j]
            if new != old:
                r -= xs[:, j] * (new - old)
                w[j] = new
                biggest = max(biggest, abs(new - old))
        if biggest <= tol:
            break
    weight = np.zeros(p)
    weight[live] = w[live] / std[live]
    bias = float(y_mean - (mean[live] * weight[live]).sum())
    return weight, bias


def sentence_sources(model: Any, prompt: list[int], start: int) -> list[list[int]]:
    """The prompt's positions from ``start`` cut into sentences: a sentence ends after a token whose
    text (spaces stripped) ends with one of :data:`SENTENCE_ENDS` or holds a line break."""
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise AttnlensError("contextcite: sources='sentence' needs the model's tokenizer to find the sentences")
    out: list[list[int]] = [[]]
    for i in range(start, len(prompt)):
        out[-1].append(i)
        text = tokenizer.decode([prompt[i]])
        if "\n" in text or text.strip().endswith(SENTENCE_ENDS):
            out.append([])
    return [s for s in out if s]


class ContextCiteMethod(AttributionMethod):
    """ContextCite: a Lasso on random ablations of the prompt's sources (tokens or sentences)."""

    name = "contextcite"
    help = ("ContextCite (Cohen-Wang et al. 2024): Lasso weights of the target's logit-probability "
            "over random ablations of the tokens (64 ablations, keep 1/2, batched)")
    aliases = ("context_cite",)
    #: random ablations (forward rows); the package's default, the paper's range is 32 to 256
    ablations = 64
    #: the probability that an ablation keeps a source
    keep = 0.5
    #: the Lasso's regularisation (the package's ``lasso_alpha``)
    alpha = 0.01
    #: the seed of the masks' generator
    seed = 0
    #: "token" (one source per token) or "sentence"
    sources = "token"
    #: "drop" (remove an ablated source's tokens, as the paper) or "replace" (the neutral token in their place)
    erase = "drop"
    #: the regression target: "logit_prob" (the package's) or "log_prob"
    output = "logit_prob"
    #: ablated rows per forward pass (fewer for long rows, :func:`~attnlens.attribution.tokens.rows_per_pass`)
    batch = BATCH

    _SETTINGS = ("ablations", "keep", "alpha", "seed", "sources", "erase", "output", "batch")

    def __init__(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - set(self._SETTINGS))
        if unknown:
            raise AttnlensError(f"contextcite: unknown setting(s) {', '.join(unknown)}; "
                                f"the settings are {', '.join(self._SETTINGS)}")
        for key, value in self.settings(**settings).items():
            setattr(self, key, value)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """This method's settings with ``overrides`` (None: this method's own), each checked."""
        s = {k: getattr(self, k) if overrides.get(k) is None else overrides[k] for k in self._SETTINGS}
        if not is_int(s["ablations"]) or s["ablations"] < 2:
            raise AttnlensError(f"contextcite: ablations must be an integer of at least 2, got {s['ablations']!r}")
        if isinstance(s["keep"], bool) or not isinstance(s["keep"], (int, float)) or not 0 < s["keep"] < 1:
            raise AttnlensError(f"contextcite: keep must be a probability in (0, 1), got {s['keep']!r}")
        if (isinstance(s["alpha"], bool) or not isinstance(s["alpha"], (int, float)) or not s["alpha"] >= 0
                or not math.isfinite(s["alpha"])):
            raise AttnlensError(f"contextcite: alpha (the Lasso's regularisation) must be a number >= 0, "
                                f"got {s['alpha']!r}")
        if not is_int(s["seed"]):
            raise AttnlensError(f"contextcite: seed must be an integer, got {s['seed']!r}")
        if not is_int(s["batch"]) or s["batch"] < 1:
            raise AttnlensError(f"contextcite: batch must be a positive integer, got {s['batch']!r}")
        for key, allowed in (("sources", SOURCES), ("erase", ERASE_MODES), ("output", OUTPUTS)):
            if s[key] not in allowed:
                raise AttnlensError(f"contextcite: {key} must be one of {', '.join(allowed)}, got {s[key]!r}")
        return s

    def source_positions(self, model: Any, target: Target, sources: str) -> tuple[list[list[int]], int]:
        """The sources (lists of prompt positions) and the first position that is a source (1 after a BOS)."""
        from .faithfulness import erasable_positions

        positions = erasable_positions(model, target.prompt)
        if not positions:
            return [], target.n_prompt
        start = positions[0]
        if sources == "token":
            return [[i] for i in positions], start
        return sentence_sources(model, target.prompt, start), start

    def ablated_rows(self, model: Any, target: Target, groups: list[list[int]], masks: np.ndarray,
                     erase: str) -> list[list[int]]:
        """The prompt after each mask (``[n_ablations, n_sources]``, True: kept)."""
        neutral = neutral_token(model)
        rows = []
        for mask in masks:
            gone = {i for g, kept in zip(groups, mask) if not kept for i in g}
            if erase == "replace":
                row = [neutral if i in gone else t for i, t in enumerate(target.prompt)]
            else:
                row = [t for i, t in enumerate(target.prompt) if i not in gone] or [neutral]
            rows.append(row)
        return rows

    def ablation_logprobs(self, model: Any, target: Target, rows: list[list[int]], *,
                          batch: int = BATCH) -> torch.Tensor:
        """``[n_rows]`` float64: the target's summed log-probability after each ablated prompt.

        Rows of any lengths share a forward pass, right-padded with their own last token (a causal
        model's earlier positions never see what follows them)."""
        device = model_device(model)
        tail = list(target.target[:-1])
        full = [list(r) + tail for r in rows]
        out = torch.empty(len(rows), dtype=torch.float64)
        order = sorted(range(len(rows)), key=lambda i: len(full[i]))  # similar lengths share a pass
        with torch.no_grad():
            lo = 0
            while lo < len(order):
                step = rows_per_pass(len(full[order[min(lo + batch, len(order)) - 1]]), batch)
                chunk = order[lo:lo + step]
                width = max(len(full[i]) for i in chunk)
                padded = [full[i] + [full[i][-1]] * (width - len(full[i])) for i in chunk]
                logits = model(torch.tensor(padded, dtype=torch.long, device=device), return_type="logits")
                out[chunk] = logprob_of(logits, target.target, [len(rows[i]) - 1 for i in chunk]).double().cpu()
                lo += len(chunk)
        return out

    def token_scores(self, model: Any, target: Target, **overrides: Any) -> torch.Tensor:
        unknown = sorted(set(overrides) - set(self._SETTINGS))
        if unknown:
            raise AttnlensError(f"contextcite: unknown setting(s) {', '.join(unknown)}; "
                                f"the settings are {', '.join(self._SETTINGS)}")
        s = self.settings(**overrides)
        groups, _ = self.source_positions(model, target, s["sources"])
        scores = torch.zeros(target.n_prompt, dtype=torch.float64)
        if not groups:
            return scores
        rng = np.random.default_rng(int(s["seed"]))
        masks = rng.random((s["ablations"], len(groups))) < s["keep"]
        rows = self.ablated_rows(model, target, groups, masks, s["erase"])
        logp = self.ablation_logprobs(model, target, rows, batch=s["batch"]).numpy()
        if s["output"] == "logit_prob":
            logp = np.minimum(logp, -1e-9)  # p = 1 exactly has no logit
            y = logp - np.log(-np.expm1(logp))
        else:
            y = logp
        n_target = len(target.target)
        weight, _ = lasso(masks.astype(np.float64), y / n_target, float(s["alpha"]))
        weight = weight * n_target
        for g, w in zip(groups, weight):
            scores[g] = float(w)
        logger.debug("contextcite: %d sources, %d ablations, %d non-zero weights", len(groups), s["ablations"],
                     int((weight != 0).sum()))
        return scores


register(ContextCiteMethod())
