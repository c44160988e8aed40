"""``attnlens experiment``: does steering help? (the studies of :mod:`attnlens.experiments`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._common import STEERING_HELP, LazyChoices, add_steering_flag, non_negative_int, number, positive_int, steering_from

def add_experiment(sub: Any) -> None:
    from ..experiments import STUDY_NAMES
    from ..experiments.config import condition_methods

    p = sub.add_parser("experiment", help="does steering help? French summaries, needle in a haystack, JSON output",
                       description="Run one of the GUIDE paper's studies under no emphasis, GUIDE at each delta, "
                       "an emphatic plain prompt (IMPORTANT: ...) and PASTA; results are resumable.")
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    studies.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="the output directory (rows.jsonl, summary.csv, plots)")
    common.add_argument("--delta", dest="deltas", nargs="+", type=number, default=[0.0, 1.0, 2.0],
                        help="GUIDE deltas (0 is the unsteered prompt)")
    common.add_argument("--conditions", nargs="+", choices=LazyChoices(condition_methods), metavar="CONDITION",
                        default=None,
                        help="which conditions to run: none, emphatic, or a registered steering method (default: none, "
                        "guide, emphatic, and pasta with --pasta-heads)")
    common.add_argument("--set", dest="method_settings", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                        help="a steering method's parameter for its condition (repeatable), e.g. pasta.alpha=0.05")
    add_steering_flag(common, STEERING_HELP + "; its methods are the conditions, next to none, unless "
                      "--conditions names them")
    common.add_argument("--layers", nargs="+", default=["all"],
                        help="layers GUIDE steers: all | none | first | last | indices")
    common.add_argument("--model", "--model_name", dest="model", default=None,
                        help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    common.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=positive_int,
                        default=None, help="tokens generated per output (default: per study)")
    common.add_argument("--num-generations", "--num_generations", dest="num_generations", type=positive_int,
                        default=1, help="outputs per item and condition (more than 1 samples)")
    common.add_argument("--limit", type=positive_int, default=None, help="use only the first N items")
    common.add_argument("--batch-size", type=positive_int, default=16, help="prompts generated together")
    common.add_argument("--max-batch-tokens", type=positive_int, default=8192,
                        help="cap on rows x padded length per batch (long contexts get smaller batches)")
    common.add_argument("--seed", type=int, default=0, help="the random seed (sampling, resamples, item choice)")
    sampling = common.add_mutually_exclusive_group()
    sampling.add_argument("--sample", dest="do_sample", action="store_true", default=None,
                          help="sample (the default when --num-generations > 1)")
    sampling.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding")
    common.add_argument("--temperature", type=number, default=0.7, help="sampling temperature (when sampling)")
    common.add_argument("--top-p", type=number, default=0.95, help="nucleus sampling's probability mass (when sampling)")
    common.add_argument("--dataset", default=None,
                        help="a local .jsonl/.json/.txt file, or a Hugging Face data set (openwebtext, blbooks, "
                        "or a hub name; needs the network)")
    common.add_argument("--dataset-split", default="train", help="the Hugging Face data set's split")
    common.add_argument("--text-field", default="text", help="the data set's text field")
    common.add_argument("--pasta-heads", default=None, help="a PASTA head config (JSON {layer: [heads]})")
    common.add_argument("--pasta-alpha", type=number, default=0.01,
                        help="PASTA's alpha: the attention kept outside the emphasised span (smaller is stronger)")
    common.add_argument("--raw", action="store_true",
                        help="send prompts as written, without the chat template (by default a model whose tokenizer "
                        "has a chat template gets each prompt as a user message, as in attnlens generate)")
    common.add_argument("--no-influence", action="store_true", help="do not record the focus span's influence")
    common.add_argument("--no-plots", action="store_true", help="write no plots")
    common.add_argument("--bootstrap", type=non_negative_int, default=1000, help="bootstrap resamples for the CIs")
    common.add_argument("--fresh", action="store_true", help="discard rows already in --out")
    common.add_argument("--json", action="store_true", help="print the summary as JSON")
    common.add_argument("--results", default=None, metavar="FILE",
                        help="also write the printed tables as a small JSON file (e.g. docs/results/NAME.json) "
                             "and print them as Markdown; a finished run reads back from --out")

    s = studies.add_parser("summarize", parents=[common], help="summarize English passages in French")
    s.add_argument("--instruction", default=None, help='the instruction (default: "Summarize in French.")')
    s.add_argument("--passage-words", type=positive_int, default=250,
                   help="passages from a Hugging Face data set are cut to this many words")
    s.add_argument("--bertscore", action="store_true", help="also score BERTScore (needs bert-score and the network)")
    n = studies.add_parser("needle", parents=[common], help="retrieve a fact placed at a depth of a long context")
    n.add_argument("--context-lengths", nargs="+", type=positive_int, default=[512, 1024, 2048],
                   help="context lengths in tokens")
    n.add_argument("--depths", nargs="+", type=number, default=[0, 25, 50, 75, 100], help="needle depths in percent")
    studies.add_parser("json", parents=[common], help="turn records into JSON with a given key schema")
    studies.add_parser("bios-json", parents=[common], help="a biography's occupation as JSON (PASTA's JSON formatting)")
    studies.add_parser("pronouns", parents=[common], help="a biography with 'they' for 'he' and 'she' (PASTA)")
    studies.add_parser("bios", parents=[common], help="the occupation from a biography (Bias in Bios)")
    studies.add_parser("counterfact", parents=[common], help="a new fact in the context against the model's (CounterFact)")
    studies.add_parser("instructions", parents=[common], help="rules, then a request; each rule checked by a program")
    f = studies.add_parser("faithfulness", parents=[common],
                           help="token attribution methods scored by erasing tokens in their order, over prompts")
    f.add_argument("--methods", default=None, help="comma-separated attribution methods (default: every registered one)")
    f.add_argument("--erase", choices=["replace", "drop"], default="replace",
                   help="replace an erased token by a neutral one (default) or drop it")
    f.add_argument("--seeds", type=positive_int, default=5, help="random orders in the baseline (default 5)")
    f.add_argument("--points", type=positive_int, default=11, help="points of the deletion and insertion curves")
    f.add_argument("--target", default=None, help="a continuation to score toward (default: each prompt's next token)")
    for name in STUDY_NAMES:  # a registered study without options of its own here (a plugin's) gets its own
        if name not in studies.choices:
            _add_registered_study(studies, name, common)
        studies.choices[name].set_defaults(run=_run_experiment)


def _add_registered_study(studies: Any, name: str, common: argparse.ArgumentParser) -> None:
    """The subcommand of a registered study: the common options, then one per field its configuration adds
    to ExperimentConfig (a number, a string or a switch; other fields are set from Python)."""
    from ..experiments import get_study

    study = get_study(name)
    summary = study.help or ((type(study).__doc__ or "").strip().splitlines() or [""])[0]
    p = studies.add_parser(name, parents=[common], help=summary or f"the registered study {name}",
                           description=summary or None)
    p.set_defaults(study_fields=_config_options(p, study.config_class))


def own_fields(config: type) -> list[Any]:
    """The dataclass fields a study's configuration adds to ExperimentConfig (the common ones have their own
    options; private and non-init fields are set from Python only)."""
    import dataclasses

    from ..experiments.config import ExperimentConfig

    base = {f.name for f in dataclasses.fields(ExperimentConfig)}
    return [f for f in dataclasses.fields(config) if f.init and f.name not in base and not f.name.startswith("_")]


def _config_options(parser: argparse.ArgumentParser, config: type) -> list[str]:
    """An option for each field ``config`` adds to ExperimentConfig, where its type is simple; returns the fields."""
    import dataclasses
    import typing

    try:
        hints = typing.get_type_hints(config)
    except Exception:  # an annotation that does not resolve: its field is set from Python only
        hints = {}
    added = []
    for f in own_fields(config):
        kind, optional = _simple_type(hints.get(f.name))
        if kind is None:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        flag = "--" + f.name.replace("_", "-")
        options: dict[str, Any] = {"dest": f.name, "help": f"the study's {f.name} setting"}
        if kind is bool:
            options.update(action=argparse.BooleanOptionalAction, default=default is True)
        else:
            converters = {int: int, float: number, str: str}
            options.update(type=converters[kind])
            if default is dataclasses.MISSING:
                options["required"] = True
            else:
                options["default"] = default
        try:
            parser.add_argument(flag, **options)
        except argparse.ArgumentError:  # the flag is a common option's: the field is set from Python only
            continue
        added.append(f.name)
    return added


def _simple_type(hint: Any) -> tuple[type | None, bool]:
    """``(int | float | str | bool, optional)`` for a field's type hint; ``(None, False)`` for any other."""
    import types
    import typing

    if hint in (int, float, str, bool):
        return hint, False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in (int, float, str, bool) and len(typing.get_args(hint)) == 2:
            return args[0], True
    return None, False


def _experiment_config(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from ..experiments import study_config
    from ._common import check_shape

    check_shape(args, layers="layers")  # before any model loads
    for flag, path in (("--pasta-heads", args.pasta_heads), ("--dataset", args.dataset)):
        if path and Path(path).suffix in (".json", ".jsonl", ".txt", ".csv") and not Path(path).expanduser().is_file():
            from ..core.errors import CLIError

            raise CLIError(f"{flag} {path!r}: no such file")

    layers = " ".join(args.layers)
    kwargs: dict[str, Any] = dict(
        out=args.out, deltas=args.deltas, conditions=args.conditions, layers=layers, model=args.model,
        num_generations=args.num_generations, do_sample=args.do_sample, temperature=args.temperature,
        top_p=args.top_p, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, seed=args.seed,
        limit=args.limit, dataset=args.dataset, dataset_split=args.dataset_split, text_field=args.text_field,
        pasta_heads=args.pasta_heads, pasta_alpha=args.pasta_alpha, influence=not args.no_influence,
        raw=args.raw, bootstrap=args.bootstrap, plots=not args.no_plots, fresh=args.fresh,
    )
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    described = steering_from(args)  # --steering JSON: the methods' settings, and their conditions
    if described is not None or getattr(args, "method_settings", None):
        steering = {name: dict(values) for name, values in (described or {}).items()}
        for name, values in method_settings(getattr(args, "method_settings", None) or []).items():
            steering.setdefault(name, {}).update(values)
        kwargs["steering"] = steering
    if described is not None and args.conditions is None:
        kwargs["conditions"] = ["none", *described]
    if args.study == "summarize":
        kwargs.update(passage_words=args.passage_words, bertscore=args.bertscore)
        if args.instruction:
            kwargs["instruction"] = args.instruction
    elif args.study == "needle":
        kwargs.update(context_lengths=args.context_lengths, depths=args.depths)
    elif args.study == "faithfulness":
        methods = None  # every registered method
        if args.methods is not None:
            methods = [m.strip() for m in args.methods.split(",") if m.strip()]
            if not methods:
                from ..core.errors import CLIError

                raise CLIError(f"--methods {args.methods!r} names no method; give comma-separated attribution "
                               "methods, or leave --methods out to run every registered one")
        kwargs.update(methods=methods, erase=args.erase, seeds=args.seeds, points=args.points, target=args.target,
                      influence=False, plots=False)
    for name in getattr(args, "study_fields", None) or ():  # a registered study's own settings
        kwargs[name] = getattr(args, name)
    return study_config(args.study)(**kwargs)


def method_settings(items: list[str]) -> dict[str, dict[str, str]]:
    """``["pasta.alpha=0.05", ...]`` as ``{"pasta": {"alpha": "0.05"}}`` (each method converts its values)."""
    from ..core.errors import CLIError

    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not eq or not dot or not method or not param:
            raise CLIError(f"--set {item!r}: write METHOD.PARAM=VALUE (e.g. pasta.alpha=0.05)")
        out.setdefault(method.strip(), {})[param.strip()] = value
    return out


def _format_estimate(row: dict[str, Any], metric: str) -> str:
    mean, low, high = row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if mean is None or mean != mean:
        return "-"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _write_results(path: str, result: Any, config: Any, *, quiet: bool) -> None:
    """The tables of the run as a results file (attnlens.experiments.results), and as Markdown."""
    from ..experiments import results

    tables = results.experiment_tables(result, config)
    written = results.write_results(path, command=results.command_line(), kind=result.study, tables=tables,
                                    about={"study": result.study, "out": str(result.out)})
    minus = results.MINUS if result.study == "faithfulness" else "-"
    for name, t in tables.items():
        if not quiet:  # the docs' tables: each after its marker line
            print(f"<!-- results: {path} {name} -->\n{results.markdown(t, minus=minus)}")
    print(f"results: {written}", file=sys.stderr)


def _run_experiment(args: argparse.Namespace) -> int:
    from ..experiments import run_experiment

    config = _experiment_config(args)
    result = run_experiment(args.study, config)
    from ..runtime.distributed import current_workers

    if not current_workers().is_main:  # under torchrun: one worker prints the merged summary
        return 0
    table = result.table()
    if args.results:
        _write_results(args.results, result, config, quiet=args.json)
    if args.json:
        print(json.dumps({"study": result.study, "out": str(result.out), "summary": table,
                          "generated": result.generated, "skipped": result.skipped,
                          "notes": list(getattr(result, "notes", ()))}, indent=2))
        return 0
    metrics = list(result.metrics)
    headers = ["condition", "items", "gens"] + metrics
    lines = [[r["condition"], str(r["items"]), str(r["generations"])] + [_format_estimate(r, m) for m in metrics]
             for r in table]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
    unit = "prompt(s)" if result.study == "faithfulness" else "generation(s)"
    print(f"{result.study}: {result.generated} new {unit}, {result.skipped} already done "
          f"(means with {int(config.confidence * 100)}% bootstrap intervals over items)")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    paired = [r for r in table if r["condition"] != "none" and any(r.get(f"{m}_diff") == r.get(f"{m}_diff")
                                                                   for m in metrics)]
    if paired:
        baseline = "random orders" if result.study == "faithfulness" else "none"
        print(f"paired difference from {baseline} (mean over the same items, bootstrap interval):")
        diffs = [[r["condition"], str(r["items"]), ""] + [_format_estimate(r, f"{m}_diff") for m in metrics]
                 for r in paired]
        widths = [max(w, *(len(line[i]) for line in diffs)) for i, w in enumerate(widths)]
        for line in diffs:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    for note in getattr(result, "notes", ()):
        print(note)
    print(f"rows:    {result.rows_path}")
    print(f"summary: {result.summary_path}")
    for path in result.plots:
        print(f"         {path}")
    return 0
