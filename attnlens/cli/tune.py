"""``attnlens tune STUDY --method NAME``: choose a steering method's strength on a study's items."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.errors import CLIError
from ._common import load_model_for, number, positive_int


def add_tune(sub: Any) -> None:
    from ..experiments import STUDY_NAMES

    p = sub.add_parser("tune", help="choose a steering method's strength on a study's items (held-out score)",
                       description="Search a method's strength on a development part of a study's items, never "
                       "choosing one whose outputs repeat themselves, and score the choice on the held-out part "
                       "with an interval, next to the unsteered model. The search is saved and resumable.")
    p.add_argument("study", choices=STUDY_NAMES, help="the study whose items the strength is chosen on")
    p.add_argument("--method", required=True, help="a registered steering method that has a strength")
    p.add_argument("--grid", nargs="+", default=None, help="the strengths to try (default: the method's)")
    p.add_argument("--metric", default=None, help="the study's metric to maximise (default: its first)")
    p.add_argument("--out", required=True, help="a directory for the search (tune-METHOD.json)")
    p.add_argument("--limit", type=positive_int, default=20, help="use the first N items")
    p.add_argument("--heldout", type=number, default=0.5, help="the share of items kept for the final score")
    p.add_argument("--max-repetition", type=number, default=0.5,
                   help="the guard: a strength whose outputs repeat more word trigrams than this is never chosen")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="tokens generated per output (default: the study's)")
    p.add_argument("--set", dest="method_settings", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                   help="a steering method's other parameter (repeatable), e.g. pasta.alpha=0.05")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--dataset", default=None, help="a local data file for the study (default: its shipped items)")
    p.add_argument("--seed", type=int, default=0, help="the random seed (item split, sampling)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from .. import steering
    from ..experiments import CONFIGS
    from ..experiments.tuning import tune_study
    from .experiment import method_settings

    method = steering.get(args.method)
    if method.strength is None:
        raise CLIError(f"steering method {method.name!r} has no strength to tune")
    kwargs: dict[str, Any] = dict(out=args.out, limit=args.limit, model=args.model, seed=args.seed,
                                  dataset=args.dataset, plots=False, influence=False)
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.method_settings:
        kwargs["steering"] = method_settings(args.method_settings)
    config = CONFIGS[args.study](**kwargs)
    model = load_model_for(args)
    result = tune_study(args.study, config, method.name, model=model, grid=args.grid, metric=args.metric,
                        heldout=args.heldout, max_repetition=args.max_repetition)
    if args.json:
        print(json.dumps(result.as_dict(), default=str))
        return 0
    for t in result.trials:
        mark = "" if t.valid else "  (breaks the text: repetition over the bound)"
        print(f"{method.strength}={t.strength}: dev score {t.score:.4f}, repetition {t.repetition:.3f}{mark}")
    h, u, d = result.heldout, result.unsteered, result.difference
    print(f"chosen {method.strength}={result.chosen}: held-out {h['mean']:.4f} [{h['low']:.4f}, {h['high']:.4f}] "
          f"(n={h['n']}); unsteered {u['mean']:.4f}; difference {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
    return 0
