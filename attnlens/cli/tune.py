"""``attnlens tune STUDY --method NAME``: choose a steering method's strength on a study's items."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..core.errors import CLIError
from ._common import (
    add_dtype_flag,
    STEERING_HELP,
    LazyChoices,
    add_steering_flag,
    load_model_for,
    number,
    positive_int,
    steering_from,
)


def _study_options(p: Any, what: str) -> None:
    """The options ``tune`` and ``compare`` share: the study, its items and split, the guard, the model."""
    from ..experiments import STUDY_NAMES

    p.add_argument("study", choices=LazyChoices(lambda: _generating(STUDY_NAMES)),
                   help=f"the study whose items {what} (a registered study that generates text)")
    p.add_argument("--metric", default=None, help="the study's metric to maximise (default: its first)")
    p.add_argument("--limit", type=positive_int, default=20, help="use the first N items")
    p.add_argument("--heldout", type=number, default=0.5, help="the share of items kept for the final score")
    p.add_argument("--max-repetition", type=share, default=0.5,
                   help="the guard: a strength whose outputs repeat more word trigrams than this is never chosen")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="tokens generated per output (default: the study's)")
    p.add_argument("--set", dest="method_settings", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                   help="a steering method's other parameter (repeatable), e.g. pasta.alpha=0.05")
    add_steering_flag(p, STEERING_HELP + "; the methods' other parameters, as --set gives them (the strength is "
                      "searched)")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    add_dtype_flag(p)
    p.add_argument("--dataset", default=None, help="a local data file for the study (default: its shipped items)")
    p.add_argument("--study-set", dest="study_settings", action="append", default=[], metavar="FIELD=VALUE",
                   help="a setting of the study's own (repeatable; a list is comma-separated), e.g. "
                        "context_lengths=256,512 or depths=0,50,100 for needle")
    p.add_argument("--seed", type=int, default=0, help="the random seed (item split, sampling)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _generating(names: tuple[str, ...]) -> list[str]:
    """The registered studies whose outputs are generated text (a strength search scores those)."""
    from ..experiments.registry import generates

    return [name for name in names if generates(name)]


def share(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    value = number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a share in [0, 1], got {text!r}")
    return value


def _config(args: argparse.Namespace, **more: Any) -> Any:
    from ..core.errors import AttnlensError
    from ..experiments import study_config
    from ..experiments.tuning import check_method_settings
    from .experiment import method_settings

    kwargs: dict[str, Any] = dict(out=args.out, limit=args.limit, model=args.model, seed=args.seed,
                                  dataset=args.dataset, plots=False, influence=False, **more)
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    described = steering_from(args)
    if described is not None or args.method_settings:
        steering = {name: dict(values) for name, values in (described or {}).items()}
        for name, values in method_settings(args.method_settings).items():
            steering.setdefault(name, {}).update(values)
        kwargs["steering"] = steering
    config_class = study_config(args.study)
    kwargs.update(study_settings(config_class, args.study, getattr(args, "study_settings", [])))
    try:
        config = config_class(**kwargs)
    except AttnlensError as exc:
        raise CLIError(f"--study-set: {exc}") from None
    try:  # a misspelt --set fails before the model loads
        check_method_settings(config)
    except AttnlensError as exc:
        raise CLIError(f"--set: {exc}") from None
    return config


def study_settings(config_class: type, study: str, items: list[str]) -> dict[str, Any]:
    """``--study-set FIELD=VALUE`` items as config fields: only a field the study's configuration adds to
    ExperimentConfig (the common ones have their own options), its value read by the field's type: a number,
    a string, a switch (true/false) or a comma-separated list of numbers."""
    import typing

    from .experiment import own_fields

    own = {f.name: f for f in own_fields(config_class)}
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # an annotation that does not resolve: read the value as its default's type
        hints = {}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise CLIError(f"--study-set {item!r}: write FIELD=VALUE (e.g. depths=0,50,100)")
        if name not in own:
            fields = ", ".join(sorted(own)) or "none"
            raise CLIError(f"--study-set {item!r}: {study} has no setting {name!r} of its own (its settings: "
                           f"{fields}; the common ones have their own options)")
        out[name] = _study_value(item, text.strip(), hints.get(name), own[name])
    return out


def _study_value(item: str, text: str, hint: Any, field: Any) -> Any:
    import dataclasses
    import types
    import typing
    from collections.abc import Sequence

    def parse(kind: Any, value: str) -> Any:
        if kind is bool:
            if value.lower() not in ("true", "false", "yes", "no", "1", "0"):
                raise ValueError("expected true or false")
            return value.lower() in ("true", "yes", "1")
        if kind is int:
            return int(value)
        if kind is float:
            return number(value)
        return value

    default = field.default if field.default is not dataclasses.MISSING else None
    origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        hint, origin, args = args[0], typing.get_origin(args[0]), list(typing.get_args(args[0]))
    try:
        if hint in (int, float, str, bool):
            return parse(hint, text)
        if origin in (list, tuple, Sequence, typing.Sequence) or isinstance(default, (list, tuple)):
            kind = args[0] if args and args[0] in (int, float, str, bool) else (
                type(default[0]) if default else str)
            values = [parse(kind, v.strip()) for v in text.split(",") if v.strip()]
            if not values:
                raise ValueError("give at least one value")
            return tuple(values)
        if default is not None and type(default) in (int, float, str, bool):
            return parse(type(default), text)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise CLIError(f"--study-set {item!r}: {exc}") from None
    raise CLIError(f"--study-set {item!r}: the setting {field.name!r} is set from Python only (its type is not a "
                   "number, a string, a switch or a list of them)")


def add_tune(sub: Any) -> None:
    p = sub.add_parser("tune", help="choose a steering method's strength on a study's items (held-out score)",
                       description="Search a method's strength on a development part of a study's items, never "
                       "choosing one whose outputs repeat themselves, and score the choice on the held-out part "
                       "with an interval, next to the unsteered model. The search is saved and resumable.")
    _study_options(p, "the strength is chosen on")
    p.add_argument("--method", required=True, help="a registered steering method that has a strength")
    p.add_argument("--grid", nargs="+", default=None, help="the strengths to try (default: the method's)")
    p.add_argument("--out", required=True, help="a directory for the search (tune-METHOD.json)")
    p.set_defaults(run=_run_tune)


def add_compare(sub: Any) -> None:
    from ..experiments.compare import DEFAULT_METHODS

    p = sub.add_parser("compare", help="steering methods side by side on a study: tuned and default strengths",
                       description="For each method, choose its strength on a development part of the study's "
                       "items (as `attnlens tune` does), then score the chosen strength, the method's paper "
                       "default and the unsteered model on the held-out part, with intervals and the paired "
                       "difference from the unsteered model. Writes compare.md, compare.csv and compare.json; "
                       "every search is saved and resumable.")
    _study_options(p, "the methods are compared on")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"the steering methods to compare (default: those --steering names, else every "
                        f"method whose profile sets compare_order: {' '.join(DEFAULT_METHODS)} and plugins' that ask)")
    p.add_argument("--grid", dest="grids", action="append", default=[], metavar="METHOD=V1,V2,...",
                   help="the strengths to try for one method (repeatable; default: each method's own)")
    p.add_argument("--pasta-heads", default=None,
                   help="PASTA's head config (JSON {layer: [heads]}; default: the shipped heads of the embedded model)")
    p.add_argument("--out", required=True, help="a directory for the searches and the table")
    p.add_argument("--results", default=None, metavar="FILE",
                   help="also write the table as a small JSON file (e.g. docs/results/NAME.json); a finished "
                        "comparison reads everything back from --out")
    p.set_defaults(run=_run_compare)


def _run_tune(args: argparse.Namespace) -> int:
    from .. import steering
    from ..experiments.profiles import profile
    from ..experiments.tuning import tune_study

    method = steering.get(args.method)
    strength = profile(method).strength
    if strength is None:
        raise CLIError(f"steering method {method.name!r} has no strength to tune (its profile names none)")
    config = _config(args)
    model = load_model_for(args)
    result = tune_study(args.study, config, method.name, model=model, grid=args.grid, metric=args.metric,
                        heldout=args.heldout, max_repetition=args.max_repetition)
    if args.json:
        print(json.dumps(result.as_dict(), default=str))
        return 0
    for t in result.trials:
        mark = "" if t.valid else "  (breaks the text: repetition over the bound)"
        print(f"{strength}={t.strength}: dev score {t.score:.4f}, repetition {t.repetition:.3f}{mark}")
    h, u, d = result.heldout, result.unsteered, result.difference
    print(f"chosen {strength}={result.chosen}: held-out {h['mean']:.4f} [{h['low']:.4f}, {h['high']:.4f}] "
          f"(n={h['n']}); unsteered {u['mean']:.4f}; difference {d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
    if result.below_unsteered:
        print(f"note: no strength tried beat the unsteered model on the development items "
              f"({result.unsteered_score:.4f}); steering with {method.name} did not help there")
    if result.tied > 1:
        print(f"note: {result.tied} strengths tied for the best development score; the strongest of them was chosen")
    if result.at_strongest:
        print(f"note: {strength}={result.chosen} is the strongest strength tried; a stronger one may score "
              "higher (widen --grid)")
    return 0


def _grids(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        strengths = [v for v in values.split(",") if v.strip()]
        if not sep or not name.strip() or not strengths:
            raise CLIError(f"--grid {item!r}: write METHOD=V1,V2,... (e.g. spa=1.25,1.5,2)")
        out[name.strip()] = strengths
    return out


def _run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..experiments.compare import compare_methods
    from ..experiments.profiles import compared_methods
    from ..experiments.sources import data_file

    if args.methods is None:  # the methods --steering names, else the default set
        args.methods = list(steering_from(args) or compared_methods())
    grids = _grids(args.grids)
    heads = args.pasta_heads
    if heads is None and args.model is None and "pasta" in args.methods:
        heads = str(data_file("pasta_heads_smollm2.json"))
    if heads is not None and not Path(heads).expanduser().is_file():
        raise CLIError(f"--pasta-heads {heads!r} is not a file")
    config = _config(args, pasta_heads=heads)
    model = load_model_for(args)
    result = compare_methods(args.study, config, args.methods, model=model, metric=args.metric, grids=grids,
                             heldout=args.heldout, max_repetition=args.max_repetition, out=args.out)
    if args.results:
        from ..experiments import results

        written = results.write_results(args.results, command=results.command_line(), kind="compare",
                                        tables=results.comparison_tables(result),
                                        about={"study": result.study, "metric": result.metric,
                                               "n_dev": result.n_dev, "n_heldout": result.n_heldout})
        print(f"results: {written}", file=sys.stderr)
    if args.json:
        print(result.to_json())
        return 0
    print(f"{result.study}: {result.metric} on n = {result.n_heldout} held-out items; strengths chosen on "
          f"{result.n_dev} others")
    if args.results:  # the marker line the docs put before a table printed from a results file
        print(f"<!-- results: {args.results} comparison -->")
    print(result.markdown(), end="")
    for name, source in result.sources.items():
        print(f"  default of {name}: {source}")
    print(f"written: {Path(args.out) / 'compare.md'}")
    return 0
