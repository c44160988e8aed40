"""The ``attnlens`` command. The library logs; this module prints.

Subcommands are registered in :data:`COMMANDS`: each entry adds its parser and
names the function that runs it. Every command turns a user error into one line
on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import textwrap
from collections.abc import Callable
from typing import Any

from ..core.errors import AttnlensError, CLIError

DEMO_PROMPT = "<!!-> Rewrite in French: <-!!> Paris is the most visited city in the world."



# ----------------------------------------------------------------------------- shared helpers


def _load(args: argparse.Namespace) -> Any:
    from ..runtime.models import load_model

    return load_model(getattr(args, "model", None))


def _side_by_side(left_title: str, left: str, right_title: str, right: str) -> str:
    width = max(40, min(shutil.get_terminal_size((120, 20)).columns, 160))
    col = (width - 3) // 2

    def wrap(text: str) -> list[str]:
        lines: list[str] = []
        for para in text.splitlines() or [""]:
            lines.extend(textwrap.wrap(para, col) or [""])
        return lines

    a, b = wrap(left), wrap(right)
    rows = [f"{left_title:<{col}} | {right_title}", f"{'-' * col}-+-{'-' * col}"]
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else ""
        y = b[i] if i < len(b) else ""
        rows.append(f"{x:<{col}} | {y}")
    return "\n".join(rows)


def _messages(prompt: str, system: str | None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {what} integer, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")
_non_negative_int = _int_at_least(0, "non-negative")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


# ----------------------------------------------------------------------------- generate / demo


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate with GUIDE tags (and PASTA heads)")
    p.add_argument("prompt", help="the prompt; wrap text in <!-> ... <-!> (or <!!->, <!!!->) to emphasise it")
    p.add_argument("--system", default=None, help="a system message (tags allowed)")
    p.add_argument("--delta-mid", type=_float, default=1.0, help="level-2 bias (level 1: half, level 3: double)")
    p.add_argument("--layers", default="all", help="all | none | first | last | comma-separated indices")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64)
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--compare", action="store_true", help="show unsteered and steered output side by side")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    pasta = p.add_argument_group("PASTA", "steer chosen heads towards --emphasize substrings (adds up with GUIDE tags)")
    pasta.add_argument("--pasta-heads", default=None, metavar="FILE",
                       help="a head config: JSON {\"layer\": [heads]} (pastalib's format, or `attnlens pasta profile`)")
    pasta.add_argument("--emphasize", action="append", default=[], metavar="TEXT",
                       help="a substring of the prompt to emphasise (repeat for several)")
    pasta.add_argument("--alpha", type=_float, default=0.01, help="PASTA's scaling coefficient (exclude: in (0, 1])")
    pasta.add_argument("--scale-position", choices=["exclude", "include"], default="exclude",
                       help="exclude: scale the rest of the prompt by alpha; include: scale the spans by 1/alpha")
    p.set_defaults(run=_run_generate)


def _generate_outputs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    from ..api.pipeline import PayAttentionPipeline
    from ..prompts.tags import escape_tags, parse_tags

    pipe = PayAttentionPipeline(model, delta_mid=args.delta_mid, layers=args.layers)
    prompt: Any = args.prompt if args.raw else _messages(args.prompt, args.system)
    if args.raw and args.system:
        raise CLIError("--system needs the chat template; drop --raw")
    if getattr(args, "pasta_heads", None) or getattr(args, "emphasize", None):
        result: dict[str, Any] = _generate_with_pasta(args, model, pipe, prompt)
    else:
        steered = pipe(prompt, max_new_tokens=args.max_new_tokens)[0]
        result = {
            "prompt": steered["prompt"],
            "spans": steered["spans"],
            "steered": steered["generated_text"],
        }
    if args.compare:
        # the same clean text, tags removed (and escaped), so nothing is steered
        def plain(text: str) -> str:
            return escape_tags(parse_tags(text).text)

        unsteered_prompt: Any = plain(args.prompt) if args.raw else [
            {**m, "content": plain(m["content"])} for m in prompt
        ]
        result["unsteered"] = pipe(unsteered_prompt, max_new_tokens=args.max_new_tokens)[0]["generated_text"]
    return result


def _generate_with_pasta(args: argparse.Namespace, model: Any, pipe: Any, prompt: Any) -> dict[str, Any]:
    """GUIDE tags and PASTA's --emphasize substrings, both steering one generation."""
    from ..runtime.generate import generate_batch
    from ..api.pipeline import guide_plan_for
    from ..steering.pasta import PASTA
    from ..prompts.tags import parse_tags

    if not args.pasta_heads:
        raise CLIError("--emphasize needs --pasta-heads FILE (a head config, JSON {\"layer\": [heads]})")
    if not args.emphasize:
        raise CLIError("--pasta-heads needs at least one --emphasize TEXT")
    steerer = PASTA(model, args.pasta_heads, alpha=args.alpha, scale_position=args.scale_position)
    prepared = pipe.prepare(prompt)
    clean: Any = (
        parse_tags(prompt).text if isinstance(prompt, str)
        else [{**m, "content": parse_tags(m["content"]).text} for m in prompt]
    )
    located = steerer.locate(clean, args.emphasize)
    if located.input_ids != prepared.input_ids:  # pragma: no cover - both tokenize the same clean prompt
        raise CLIError("the prompt tokenizes differently for GUIDE and PASTA")
    plans = [guide_plan_for(model, prepared, pipe.layers), steerer.plan(list(located.spans), seq_len=len(located))]
    tokens = generate_batch(model, [prepared.input_ids], plans, max_new_tokens=args.max_new_tokens)[0]
    spans = [{"start": s, "end": e, "text": sub} for (s, e), sub in zip(located.spans, located.substrings)]
    return {
        "prompt": prepared.text,
        "spans": [span.as_dict() for span in prepared.spans],
        "pasta_spans": spans,
        "pasta_heads": {str(k): list(v) for k, v in steerer.head_config.items()},
        "steered": model.tokenizer.decode(tokens, skip_special_tokens=True),
    }


def _run_generate(args: argparse.Namespace) -> int:
    model = _load(args)
    result = _generate_outputs(args, model)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif args.compare:
        methods = [m for m, on in (("GUIDE", result["spans"]), ("PASTA", result.get("pasta_spans"))) if on]
        title = f"steered ({' + '.join(methods) or 'GUIDE'})"
        print(_side_by_side("unsteered", result["unsteered"], title, result["steered"]))
    else:
        print(result["steered"])
    return 0


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the embedded model, unsteered vs GUIDE-steered, side by side")
    p.add_argument("--prompt", default=DEMO_PROMPT)
    p.add_argument("--max-new-tokens", type=_positive_int, default=60)
    p.add_argument("--delta-mid", type=_float, default=1.0)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ..runtime.models import EMBEDDED_NAME

    print(f"attnlens demo: {EMBEDDED_NAME} (embedded), GUIDE delta_mid={args.delta_mid}")
    print(f"prompt: {args.prompt}\n")
    ns = argparse.Namespace(
        prompt=args.prompt, system=None, delta_mid=args.delta_mid, layers="all",
        max_new_tokens=args.max_new_tokens, model=None, raw=False, compare=True, json=False,
    )
    return _run_generate(ns)


# ----------------------------------------------------------------------------- heads (AttentionData)



def _read_texts(path: str) -> list[str]:
    """One text per line (blank lines skipped); ``-`` reads standard input."""
    if path == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError as exc:
            raise CLIError(f"--texts {path!r}: {exc.strerror or exc}") from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise CLIError(f"--texts {path!r} has no text (one text per line)")
    return texts


def _attention_data(args: argparse.Namespace, client: Any = None) -> Any:
    from ..analysis.attention_data import AttentionData

    texts = _read_texts(args.texts)
    model = _load(args)
    return AttentionData(
        model,
        openai_model=getattr(args, "openai_model", None),
        text_batch=texts,
        min_length=args.min_length,
        max_length=args.max_length,
        suppress_first_token=not args.keep_first_token,
        client=client,
        seed=args.seed,
    )


def _add_heads(sub: Any) -> None:
    p = sub.add_parser("heads", help="rank what an attention head attends to, or describe it with an LLM")
    actions = p.add_subparsers(dest="heads_command", metavar="ACTION")
    actions.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--layer", type=int, required=True, help="the layer (negative counts from the end)")
    common.add_argument("--head", type=int, required=True, help="the head in that layer")
    common.add_argument("--texts", required=True, help="a file with one text per line ('-' reads stdin)")
    common.add_argument("--min-length", type=_non_negative_int, default=10, help="first query position of a row")
    common.add_argument("--max-length", type=_positive_int, default=30, help="texts are cut to this many tokens")
    common.add_argument("--keep-first-token", action="store_true",
                        help="rank the first token too (by default it is left out, often an attention sink)")
    common.add_argument("--seed", type=int, default=None, help="seed for the random choices")
    common.add_argument("--model", default=None, help="a model name or path (default: the embedded model)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")

    rank = actions.add_parser("rank", parents=[common], help="the tokens the head attends to most, over the texts")
    rank.add_argument("--num", type=_positive_int, default=10, help="how many multiples to list")
    rank.add_argument("--token", default=None, help="only this token (surrounding spaces ignored)")
    rank.add_argument("--reverse", action="store_true", help="the lowest multiples instead of the highest")
    rank.add_argument("--random", action="store_true", help="random multiples instead of the highest")
    rank.add_argument("--html", default=None, help="also save the table as a standalone HTML file")
    rank.set_defaults(run=_run_heads_rank)

    from ..analysis.descriptions import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT

    describe = actions.add_parser("describe", parents=[common], help="ask a chat model what the head attends to")
    describe.add_argument("--openai-model", required=True, help="the chat model (e.g. gpt-4o-mini, or a local model)")
    describe.add_argument("--base-url", default=None,
                          help="an OpenAI-compatible endpoint (e.g. http://localhost:11434/v1); default: OpenAI")
    describe.add_argument("--api-key-env", default="OPENAI_API_KEY",
                          help="the environment variable holding the key (default: OPENAI_API_KEY)")
    describe.add_argument("--num-samples", type=_positive_int, default=10, help="rows put in the prompt")
    describe.add_argument("--custom-prompt", default=None, help="text added to the prompt after the rows")
    describe.add_argument("--show-prompt", action="store_true", help="print the prompt before the description")
    describe.add_argument("--timeout", type=_float, default=DEFAULT_TIMEOUT, help="seconds to wait for one answer")
    describe.add_argument("--max-retries", type=_non_negative_int, default=DEFAULT_MAX_RETRIES,
                          help="retries on 429, 5xx and timeouts (with backoff)")
    describe.set_defaults(run=_run_heads_describe)


def _run_heads_rank(args: argparse.Namespace) -> int:
    from .. import viz

    ad = _attention_data(args)
    if args.random:
        if args.token is not None or args.reverse:
            raise CLIError("--random cannot be combined with --token or --reverse")
        rows = ad.get_random_multiples(args.layer, args.head, num_multiples=args.num)
        kind = "random"
    else:
        rows = ad.get_ranked_multiples(
            args.layer, args.head, str_token=args.token, num_multiples=args.num, reverse=args.reverse
        )
        kind = "bottom" if args.reverse else "top"
    record = ad.head_data(args.layer, args.head)
    total = len(ad.ranked_multiples(record.layer, record.head))
    title = f"layer {record.layer} head {record.head}: {kind} {len(rows)} of {total} multiples"
    if args.token is not None:
        title += f" for {args.token!r}"
    if args.html:
        viz.multiples_table(rows, title=title, suppress_first_token=ad.suppress_first_token).save(args.html)
    if args.json:
        print(json.dumps(
            [{"token": r.token, "multiple": round(r.multiple, 4), "text_index": r.text_index, "query": r.query,
              "key": r.key, "context": "".join(r.str_tokens)} for r in rows],
            ensure_ascii=False, indent=2,
        ))
    else:
        print(viz.multiples_text(rows, title=title))
        if args.html:
            print(f"table saved to {args.html}")
    return 0


def _run_heads_describe(args: argparse.Namespace) -> int:
    from ..analysis.descriptions import make_client

    client = make_client(
        base_url=args.base_url, api_key_env=args.api_key_env, timeout=args.timeout, max_retries=args.max_retries
    )
    ad = _attention_data(args, client=client)
    prompt, description = ad.describe_head(
        args.layer, args.head, num_samples=args.num_samples, custom_prompt=args.custom_prompt,
        print_description=False,
    )
    record = ad.head_data(args.layer, args.head)
    if args.json:
        print(json.dumps(
            {"layer": record.layer, "head": record.head, "openai_model": args.openai_model,
             "description": description, "prompt": prompt},
            ensure_ascii=False, indent=2,
        ))
        return 0
    if args.show_prompt:
        print(prompt)
        print("-" * 40)
    print(f"layer {record.layer} head {record.head} ({args.openai_model}):")
    print(textwrap.fill(description, width=100))
    return 0


# ----------------------------------------------------------------------------- experiment


def _add_experiment(sub: Any) -> None:
    from ..experiments import METHODS, STUDIES

    p = sub.add_parser("experiment", help="does steering help? French summaries, needle in a haystack, JSON output",
                       description="Run one of the GUIDE paper's studies under no emphasis, GUIDE at each delta, "
                       "an emphatic plain prompt (IMPORTANT: ...) and PASTA; results are resumable.")
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    studies.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="the output directory (rows.jsonl, summary.csv, plots)")
    common.add_argument("--delta", dest="deltas", nargs="+", type=_float, default=[0.0, 1.0, 2.0],
                        help="GUIDE deltas (0 is the unsteered prompt)")
    common.add_argument("--conditions", nargs="+", choices=METHODS, default=None,
                        help="which conditions to run (default: none, guide, emphatic, and pasta with --pasta-heads)")
    common.add_argument("--layers", nargs="+", default=["all"],
                        help="layers GUIDE steers: all | none | first | last | indices")
    common.add_argument("--model", "--model_name", dest="model", default=None,
                        help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    common.add_argument("--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=_positive_int,
                        default=None, help="tokens generated per output (default: per study)")
    common.add_argument("--num-generations", "--num_generations", dest="num_generations", type=_positive_int,
                        default=1, help="outputs per item and condition (more than 1 samples)")
    common.add_argument("--limit", type=_positive_int, default=None, help="use only the first N items")
    common.add_argument("--batch-size", type=_positive_int, default=16, help="prompts generated together")
    common.add_argument("--max-batch-tokens", type=_positive_int, default=8192,
                        help="cap on rows x padded length per batch (long contexts get smaller batches)")
    common.add_argument("--seed", type=int, default=0)
    sampling = common.add_mutually_exclusive_group()
    sampling.add_argument("--sample", dest="do_sample", action="store_true", default=None,
                          help="sample (the default when --num-generations > 1)")
    sampling.add_argument("--greedy", dest="do_sample", action="store_false", help="greedy decoding")
    common.add_argument("--temperature", type=_float, default=0.7)
    common.add_argument("--top-p", type=_float, default=0.95)
    common.add_argument("--dataset", default=None,
                        help="a local .jsonl/.json/.txt file, or a Hugging Face data set (openwebtext, blbooks, "
                        "or a hub name; needs the network)")
    common.add_argument("--dataset-split", default="train")
    common.add_argument("--text-field", default="text", help="the data set's text field")
    common.add_argument("--pasta-heads", default=None, help="a PASTA head config (JSON {layer: [heads]})")
    common.add_argument("--pasta-alpha", type=_float, default=0.01)
    common.add_argument("--raw", action="store_true", help="do not apply the chat template")
    common.add_argument("--no-influence", action="store_true", help="do not record the focus span's influence")
    common.add_argument("--no-plots", action="store_true")
    common.add_argument("--bootstrap", type=_non_negative_int, default=1000, help="bootstrap resamples for the CIs")
    common.add_argument("--fresh", action="store_true", help="discard rows already in --out")
    common.add_argument("--json", action="store_true", help="print the summary as JSON")

    s = studies.add_parser("summarize", parents=[common], help="summarize English passages in French")
    s.add_argument("--instruction", default=None, help='the instruction (default: "Summarize in French.")')
    s.add_argument("--passage-words", type=_positive_int, default=250,
                   help="passages from a Hugging Face data set are cut to this many words")
    s.add_argument("--bertscore", action="store_true", help="also score BERTScore (needs bert-score and the network)")
    n = studies.add_parser("needle", parents=[common], help="retrieve a fact placed at a depth of a long context")
    n.add_argument("--context-lengths", nargs="+", type=_positive_int, default=[512, 1024, 2048],
                   help="context lengths in tokens")
    n.add_argument("--depths", nargs="+", type=_float, default=[0, 25, 50, 75, 100], help="needle depths in percent")
    studies.add_parser("json", parents=[common], help="turn records into JSON with a given key schema")
    for name in STUDIES:
        studies.choices[name].set_defaults(run=_run_experiment)


def _experiment_config(args: argparse.Namespace) -> Any:
    from ..experiments import CONFIGS

    layers = " ".join(args.layers)
    kwargs: dict[str, Any] = dict(
        out=args.out, deltas=args.deltas, conditions=args.conditions, layers=layers, model=args.model,
        num_generations=args.num_generations, do_sample=args.do_sample, temperature=args.temperature,
        top_p=args.top_p, batch_size=args.batch_size, max_batch_tokens=args.max_batch_tokens, seed=args.seed,
        limit=args.limit, dataset=args.dataset, dataset_split=args.dataset_split, text_field=args.text_field,
        pasta_heads=args.pasta_heads, pasta_alpha=args.pasta_alpha, influence=not args.no_influence,
        chat=False if args.raw else None, bootstrap=args.bootstrap, plots=not args.no_plots, fresh=args.fresh,
    )
    if args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    if args.study == "summarize":
        kwargs.update(passage_words=args.passage_words, bertscore=args.bertscore)
        if args.instruction:
            kwargs["instruction"] = args.instruction
    elif args.study == "needle":
        kwargs.update(context_lengths=args.context_lengths, depths=args.depths)
    return CONFIGS[args.study](**kwargs)


def _format_estimate(row: dict[str, Any], metric: str) -> str:
    mean, low, high = row.get(metric), row.get(f"{metric}_low"), row.get(f"{metric}_high")
    if mean is None or mean != mean:
        return "-"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


def _run_experiment(args: argparse.Namespace) -> int:
    from ..experiments import run_experiment

    config = _experiment_config(args)
    result = run_experiment(args.study, config)
    table = result.table()
    if args.json:
        print(json.dumps({"study": result.study, "out": str(result.out), "summary": table,
                          "generated": result.generated, "skipped": result.skipped}, indent=2))
        return 0
    metrics = list(result.metrics)
    headers = ["condition", "items", "gens"] + metrics
    lines = [[r["condition"], str(r["items"]), str(r["generations"])] + [_format_estimate(r, m) for m in metrics]
             for r in table]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]
    print(f"{result.study}: {result.generated} new generation(s), {result.skipped} already done "
          f"(means with {int(config.confidence * 100)}% bootstrap intervals over items)")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    print(f"rows:    {result.rows_path}")
    print(f"summary: {result.summary_path}")
    for path in result.plots:
        print(f"         {path}")
    return 0


# ----------------------------------------------------------------------------- influence


def _zero_or_more(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _add_influence(sub: Any) -> None:
    p = sub.add_parser(
        "influence",
        help="follow <?-> ... <-?> spans through the layers (Influence, attention rollout)",
        description="Measure how much each <?-> ... <-?> span reaches every position, layer by layer. "
        "GUIDE tags in the same prompt steer the measured pass.",
    )
    p.add_argument("prompt", help="the prompt; wrap the text to follow in <?-> ... <-?>")
    p.add_argument("--method", choices=["influence", "rollout", "both"], default="influence")
    p.add_argument("--plot", default=None, metavar="FILE", help="write an HTML view (plot and token heat map)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON (every layer and position)")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--system", default=None, help="a system message (tags allowed)")
    p.add_argument("--delta-mid", type=_float, default=1.0, help="level-2 GUIDE bias for <!-> tags in the prompt")
    p.add_argument("--layers", default="all", help="the layers GUIDE tags steer")
    p.add_argument("--use-values", action="store_true", help="weight keys by their value vectors' norms")
    p.add_argument("--max-new-tokens", type=_zero_or_more, default=0,
                   help="generate this many tokens first and cover them too (default 0: the prompt only)")
    p.add_argument("--top", type=_positive_int, default=5, help="tokens listed per span in the text output")
    p.set_defaults(run=_run_influence)


def _influence_outputs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    from ..runtime.generate import generate_batch
    from ..api.pipeline import PayAttentionPipeline, guide_plan_for

    if args.raw and args.system:
        raise CLIError("--system needs the chat template; drop --raw")
    pipe = PayAttentionPipeline(model, delta_mid=args.delta_mid, layers=args.layers)
    prompt = pipe.prepare(args.prompt if args.raw else _messages(args.prompt, args.system))
    if not prompt.influence_spans():
        raise CLIError("the prompt has no influence tag: wrap the text to follow in <?-> ... <-?>")
    generated: list[int] = []
    if args.max_new_tokens:
        plan = guide_plan_for(model, prompt, args.layers)
        generated = generate_batch(model, [prompt.input_ids], [plan], max_new_tokens=args.max_new_tokens)[0]
    methods = ("influence", "rollout") if args.method == "both" else (args.method,)
    trace = pipe.measure_influence(prompt, methods=methods, generated=generated, use_values=args.use_values)
    tokens = [model.tokenizer.decode([t]) for t in trace.tokens]
    spans = []
    for i, span in enumerate(prompt.influence_spans()):
        entry: dict[str, Any] = {"start": span.start, "end": span.end, "text": span.text}
        for m in methods:
            entry[m] = trace[m][i]
        spans.append(entry)
    return {
        "prompt": prompt.text,
        "tokens": tokens,
        "prompt_length": len(prompt.input_ids),
        "generated_text": model.tokenizer.decode(generated, skip_special_tokens=True),
        "methods": list(methods),
        "spans": spans,
    }


def _influence_plot(result: dict[str, Any], path: str) -> str:
    from ..viz import HTMLView, influence_view

    views = [
        influence_view(
            {m: span[m] for m in result["methods"]}, result["tokens"],
            prompt_length=result["prompt_length"], title=f"span {i + 1}: {span['text'].strip()!r}",
            include_plotlyjs=(i == 0),
        )
        for i, span in enumerate(result["spans"])
    ]
    page = HTMLView("\n<hr>\n".join(v.body for v in views), title="attnlens influence")
    try:
        return str(page.save(path))
    except OSError as exc:
        raise CLIError(f"--plot {path!r}: {exc.strerror or exc}") from None


def _run_influence(args: argparse.Namespace) -> int:
    model = _load(args)
    result = _influence_outputs(args, model)
    plot = _influence_plot(result, args.plot) if args.plot else None
    if args.json:
        out = {**result, "spans": [
            {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in span.items()} for span in result["spans"]
        ]}
        if plot:
            out["plot"] = plot
        print(json.dumps(out, ensure_ascii=False))
        return 0
    methods, tokens = result["methods"], result["tokens"]
    last = result["prompt_length"] - 1
    if result["generated_text"]:
        print(f"generated: {result['generated_text']}\n")
    for i, span in enumerate(result["spans"]):
        print(f"span {i + 1}: tokens [{span['start']}, {span['end']}) {span['text']!r}")
        print(f"  {', '.join(methods)} at the last token (position {last}, {tokens[last]!r}), by layer:")
        print("  layer  " + "  ".join(f"{m:>9}" for m in methods))
        n_rows = span[methods[0]].shape[0]
        for row in range(n_rows):
            label = "span" if row == 0 else str(row - 1)
            print(f"  {label:>5}  " + "  ".join(f"{float(span[m][row, last]):9.4f}" for m in methods))
        final = span[methods[0]][-1].clone()
        final[span["start"] : span["end"]] = -1.0  # rank the positions outside the span
        k = min(args.top, max(0, len(tokens) - (span["end"] - span["start"])))
        if k:
            top = final.topk(k).indices.tolist()
            shown = ", ".join(f"{tokens[j]!r} ({float(span[methods[0]][-1, j]):.3f})" for j in top)
            print(f"  most reached by the span in the final layer ({methods[0]}): {shown}")
        print()
    if plot:
        print(f"plot: {plot}")
    return 0


# ----------------------------------------------------------------------------- pasta


def _add_pasta(sub: Any) -> None:
    from ..api.profile import SCORERS

    p = sub.add_parser("pasta", help="PASTA: find which attention heads to steer")
    tasks = p.add_subparsers(dest="pasta_command", metavar="TASK")
    tasks.required = True
    prof = tasks.add_parser(
        "profile",
        help="steer each head alone on example data and rank the heads",
        description="For every (layer, head), steer that head alone towards each example's 'emphasize' "
        "substrings and score the log-probability of its 'target' completion; write the best heads as a "
        "head config for `attnlens generate --pasta-heads`.",
    )
    prof.add_argument("--data", required=True, help="JSONL examples: {\"prompt\", \"emphasize\", \"target\"} per line")
    prof.add_argument("--top-k", type=_positive_int, default=20, help="heads written to --out")
    prof.add_argument("--out", required=True, help="the head config to write (pastalib's JSON format)")
    prof.add_argument("--alpha", type=_float, default=0.01)
    prof.add_argument("--scale-position", choices=["exclude", "include"], default="exclude")
    prof.add_argument("--scorer", choices=sorted(SCORERS), default="mean_logprob")
    prof.add_argument("--layers", default="all", help="profile only these layers: all | comma-separated indices")
    prof.add_argument("--only-helpful", action="store_true", help="write only heads that beat the unsteered baseline")
    prof.add_argument("--batch-size", type=_positive_int, default=None, help="heads per forward pass (default: auto)")
    prof.add_argument("--scores", default=None, metavar="FILE", help="also write every head's score as JSON")
    prof.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    prof.add_argument("--raw", action="store_true", help="do not apply the chat template to string prompts")
    prof.add_argument("--threads", type=_positive_int, default=None,
                      help="torch threads (on a busy machine one thread can be much faster than several)")
    prof.add_argument("--json", action="store_true", help="print machine-readable JSON")
    prof.set_defaults(run=_run_pasta_profile)


def _run_pasta_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..core.validate import resolve_layers
    from ..api.profile import load_examples, profile_heads

    examples = load_examples(args.data)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = _load(args)
    layers = resolve_layers(args.layers, model.cfg.n_layers)
    if not layers:
        raise CLIError("--layers selects no layer")
    result = profile_heads(
        model, examples, alpha=args.alpha, scale_position=args.scale_position, scorer=args.scorer,
        heads=list(layers), chat=not args.raw, batch_size=args.batch_size,
    )
    out = result.save(args.out, args.top_k, only_helpful=args.only_helpful)
    if args.scores:
        Path(args.scores).expanduser().write_text(json.dumps(result.as_dict(), indent=1) + "\n")
    best = result.ranking()[: args.top_k]
    if args.only_helpful:
        best = [s for s in best if s.gain > 0]
    if args.json:
        print(json.dumps({"out": str(out), "baseline": result.baseline, "seconds": result.seconds,
                          "heads": len(result), "examples": result.n_examples,
                          "top": [{"layer": s.layer, "head": s.head, "score": s.score, "gain": s.gain} for s in best]},
                         indent=2))
        return 0
    print(f"profiled {len(result)} heads on {result.n_examples} example(s) in {result.seconds:.1f} s "
          f"(alpha={result.alpha}, {result.scale_position}, scorer {result.scorer})")
    print(f"unsteered baseline: {result.baseline:.4f}")
    print(f"{'rank':>4}  {'layer':>5}  {'head':>4}  {'score':>9}  {'gain':>8}")
    for rank, s in enumerate(best, 1):
        print(f"{rank:>4}  {s.layer:>5}  {s.head:>4}  {s.score:>9.4f}  {s.gain:>+8.4f}")
    print(f"wrote {len(best)} head(s) to {out}")
    return 0


# ----------------------------------------------------------------------------- registry

COMMANDS: list[Callable[[Any], None]] = [
    _add_generate, _add_demo, _add_heads, _add_experiment, _add_influence, _add_pasta,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnlens", description="Steer and explain where a language model's attention goes."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        try:
            import transformers

            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
        except ImportError:  # pragma: no cover
            pass
    try:
        return int(args.run(args) or 0)
    except AttnlensError as exc:
        print(f"attnlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnlens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
