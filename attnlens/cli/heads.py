"""``attnlens heads rank|describe|describe-all``: what attention heads attend to (AttentionData)."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from ..core.errors import CLIError
from ._common import check_shape, load_model_for, non_negative_int, positive_int, positive_number, read_texts, writable

def head_list(text: str) -> Any:
    """``--heads``: ``all`` or head indices separated by commas or spaces (non-negative integers)."""
    if text.strip().lower() == "all":
        return "all"
    parts = text.replace(",", " ").split()
    bad = [p for p in parts if not (p.isascii() and p.isdigit())]
    if not parts or bad:
        raise CLIError(
            f"--heads: expected 'all' or head indices such as 0,3,5; got {text!r}"
            + (f" ({', '.join(map(repr, bad))} is not a head index)" if bad else "")
        )
    return [int(p) for p in parts]


def _precheck(args: argparse.Namespace) -> list[str]:
    """What needs no model, before it (or a chat client) is made: the heads against the model's config, the
    files. Returns the texts."""
    check_shape(args, layer="layer" if hasattr(args, "layer") else None, head="head" if hasattr(args, "head") else None,
                layers="layers" if hasattr(args, "layers") else None, heads="heads" if hasattr(args, "heads") else None)
    texts = read_texts(args.texts)
    if getattr(args, "held_out", None):
        read_texts(args.held_out, "--held-out")
    return texts


def _attention_data(args: argparse.Namespace, client: Any = None) -> Any:
    from ..api import AttentionData

    texts = _precheck(args)
    model = load_model_for(args)
    return AttentionData(
        model,
        openai_model=getattr(args, "openai_model", None),
        text_batch=texts,
        min_length=args.min_length,
        max_length=args.max_length,
        suppress_first_token=not args.keep_first_token,
        client=client,
        seed=args.seed,
        **({"deadline": args.deadline} if getattr(args, "deadline", None) is not None else {}),
    )


def add_heads(sub: Any) -> None:
    p = sub.add_parser("heads", help="rank what an attention head attends to, or describe it with an LLM")
    actions = p.add_subparsers(dest="heads_command", metavar="ACTION")
    actions.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--layer", type=int, required=True, help="the layer (negative counts from the end)")
    common.add_argument("--head", type=int, required=True, help="the head in that layer")
    texts = argparse.ArgumentParser(add_help=False)
    texts.add_argument("--texts", required=True, help="a file with one text per line ('-' reads stdin)")
    texts.add_argument("--min-length", type=non_negative_int, default=10, help="first query position of a row")
    texts.add_argument("--max-length", type=positive_int, default=30, help="texts are cut to this many tokens")
    texts.add_argument("--keep-first-token", action="store_true",
                       help="rank the first token too (by default it is left out, often an attention sink)")
    texts.add_argument("--seed", type=int, default=None, help="seed for the random choices")
    texts.add_argument("--model", default=None, help="a model name or path (default: the embedded model)")
    texts.add_argument("--json", action="store_true", help="print machine-readable JSON")

    rank = actions.add_parser("rank", parents=[common, texts],
                              help="the tokens the head attends to most, over the texts")
    rank.add_argument("--num", type=positive_int, default=10, help="how many multiples to list")
    rank.add_argument("--token", default=None, help="only this token (surrounding spaces ignored)")
    rank.add_argument("--reverse", action="store_true", help="the lowest multiples instead of the highest")
    rank.add_argument("--random", action="store_true", help="random multiples instead of the highest")
    rank.add_argument("--html", default=None, help="also save the table as a standalone HTML file")
    rank.set_defaults(run=_run_heads_rank)

    from ..analysis.descriptions import DEFAULT_DEADLINE, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT  # no torch

    llm = argparse.ArgumentParser(add_help=False)
    llm.add_argument("--openai-model", required=True, help="the chat model (e.g. gpt-4o-mini, or a local model)")
    llm.add_argument("--base-url", default=None,
                     help="an OpenAI-compatible endpoint (e.g. http://localhost:11434/v1); default: OpenAI")
    llm.add_argument("--api-key-env", default="OPENAI_API_KEY",
                     help="the environment variable holding the key (default: OPENAI_API_KEY)")
    llm.add_argument("--num-samples", type=positive_int, default=10, help="rows put in the prompt")
    llm.add_argument("--custom-prompt", default=None, help="text added to the prompt after the rows")
    llm.add_argument("--timeout", type=positive_number, default=DEFAULT_TIMEOUT,
                     help=f"seconds to wait for one answer (default {DEFAULT_TIMEOUT:g})")
    llm.add_argument("--max-retries", type=non_negative_int, default=DEFAULT_MAX_RETRIES,
                     help=f"retries on 429, 5xx and timeouts, with backoff (default {DEFAULT_MAX_RETRIES})")
    llm.add_argument("--deadline", type=positive_number, default=DEFAULT_DEADLINE,
                     help=f"seconds the whole request may take, retries included (default {DEFAULT_DEADLINE:g})")

    llm.add_argument("--held-out", default=None, metavar="FILE",
                     help="texts the describer never sees (one a line): score each description on them, beside a "
                     "control (another head's description): score and control_score")

    describe = actions.add_parser("describe", parents=[common, texts, llm],
                                  help="ask a chat model what the head attends to")
    describe.add_argument("--show-prompt", action="store_true", help="print the prompt before the description")
    describe.set_defaults(run=_run_heads_describe)

    many = actions.add_parser(
        "describe-all", parents=[texts, llm],
        help="describe many heads (a resumable sweep with --sweep-dir; torchrun splits the layers)",
    )
    many.add_argument("--layers", default="all", help="all | none | first | last | comma-separated indices")
    many.add_argument("--heads", default="all", help="all | comma-separated head indices")
    many.add_argument("--max-concurrency", type=positive_int, default=4, help="requests at once (per worker)")
    many.add_argument("--sweep-dir", default=None, metavar="DIR",
                      help="keep results in DIR/descriptions.jsonl as layers finish (needed under torchrun)")
    many.set_defaults(run=_run_heads_describe_all)


def _run_heads_rank(args: argparse.Namespace) -> int:
    from .. import viz

    if args.html:
        writable(args.html, "--html")
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

    _precheck(args)
    client = make_client(
        base_url=args.base_url, api_key_env=args.api_key_env, timeout=args.timeout, max_retries=args.max_retries
    )
    ad = _attention_data(args, client=client)
    prompt, description = ad.describe_head(
        args.layer, args.head, num_samples=args.num_samples, custom_prompt=args.custom_prompt,
        print_description=False,
    )
    record = ad.head_data(args.layer, args.head)
    scored = ad.score_head(record.layer, record.head, read_texts(args.held_out, "--held-out"),
                           description=description) if args.held_out else None
    if args.json:
        extra = {"score": scored["score"], "control_score": scored["control_score"]} if scored else {}
        print(json.dumps(
            {"layer": record.layer, "head": record.head, "openai_model": args.openai_model,
             "description": description, "prompt": prompt, **extra},
            ensure_ascii=False, indent=2,
        ))
        return 0
    if args.show_prompt:
        print(prompt)
        print("-" * 40)
    print(f"layer {record.layer} head {record.head} ({args.openai_model}):")
    print(textwrap.fill(description, width=100))
    if scored:
        print(f"held-out score {scored['score']:.3f} (control: another head's description, "
              f"{scored['control_score']:.3f})")
    return 0


def _run_heads_describe_all(args: argparse.Namespace) -> int:
    from ..analysis.descriptions import make_client
    from ..runtime.distributed import current_workers

    heads: Any = head_list(args.heads)  # before the client and the model
    _precheck(args)
    client = make_client(
        base_url=args.base_url, api_key_env=args.api_key_env, timeout=args.timeout, max_retries=args.max_retries
    )
    ad = _attention_data(args, client=client)
    described = ad.describe_heads(args.layers, heads, num_samples=args.num_samples, custom_prompt=args.custom_prompt,
                                  max_concurrency=args.max_concurrency, sweep_dir=args.sweep_dir,
                                  held_out=read_texts(args.held_out, "--held-out") if args.held_out else None)
    if not current_workers().is_main:  # every worker holds the rows; one prints
        return 0
    if args.json:
        print(json.dumps(described.to_records(), ensure_ascii=False, indent=2))
    else:
        print(str(described))
    return 0
