"""``attnlens generate`` and ``attnlens demo``: GUIDE tags (and PASTA heads) through the shared chain."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..core.errors import CLIError
from ._common import (add_dtype_flag, add_chat_flags, add_later, add_steering_flag, steering_from, check_shape, check_tags, load_model_for, number, positive_int, prompt_from,
                      side_by_side, warn)

#: the demo's case, CounterFact-style: the context states an old fact and a new one that contradicts what
#: the model knows, and GUIDE emphasises the new one. On the embedded model (greedy decoding) the unsteered
#: answer keeps the old object and the steered answer names the new one; tests/test_demo.py checks it still does.
DEMO_CASE = {
    "old_fact": "The capital of Germany is Berlin.",
    "new_fact": "The capital of Germany is Brussels.",
    "question": "What is the capital of Germany?",
    "old": "Berlin",
    "new": "Brussels",
}
DEMO_PROMPT = (f"Previously, {DEMO_CASE['old_fact']} Currently, <!!-> {DEMO_CASE['new_fact']} <-!!>\n"
               f"{DEMO_CASE['question']}")
DEMO_DELTA_MID = 1.0

def add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate with GUIDE tags (and PASTA heads)")
    p.add_argument("prompt", help="the prompt; wrap text in <!-> ... <-!> (or <!!->, <!!!->) to emphasise it")
    p.add_argument("--system", default=None, help="a system message (tags allowed)")
    p.add_argument("--delta-mid", type=number, default=1.0, help="level-2 bias (level 1: half, level 3: double)")
    p.add_argument("--layers", default="all", help="all | none | first | last | comma-separated indices")
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens to generate at most")
    p.add_argument("--model", default=None, help="a model name or path (default: the embedded SmolLM2-135M-Instruct)")
    add_dtype_flag(p)
    add_chat_flags(p)
    p.add_argument("--compare", action="store_true", help="show unsteered and steered output side by side")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--emphasize", action="append", default=[], metavar="TEXT",
                   help="a substring of the prompt to emphasise (repeat for several), for a method that steers "
                        "emphasised substrings (PASTA)")
    p.add_argument("--focus", choices=("auto",), default=None,
                   help="auto: the model first names the sentences of the prompt that matter, which are then tagged")
    add_later(p, add_method_flags)  # the registry is read when the command runs
    p.set_defaults(run=_run_generate)


#: parameters the command's own options give every method that takes them
SHARED = ("delta_mid", "layers")


def _flag(method: Any, param: Any) -> str:
    return param.flag or f"--{method.name}-{param.name}".replace("_", "-")


def _dest(method: Any, param: Any) -> str:
    return f"steer__{method.name}__{param.name}"


def add_method_flags(p: Any) -> None:
    """One option per parameter of every registered steering method, and ``--steer NAME`` to switch one on."""
    from .. import steering

    names = steering.methods()
    add_steering_flag(p)
    p.add_argument("--steer", action="append", default=[], choices=names, metavar="METHOD",
                   help=f"apply a registered steering method ({', '.join(names)}); a method is also applied "
                        "when one of its options is given")
    for name in names:
        method = steering.get(name)
        own = [param for param in method.params if param.name not in SHARED]
        if not own:
            continue
        group = p.add_argument_group(name.upper(), method.help or None)
        for param in own:
            default = "required" if param.required else f"default: {param.default!r}"
            group.add_argument(_flag(method, param), dest=_dest(method, param), default=None,
                               choices=param.choices, metavar=None if param.choices else param.name.upper(),
                               help=(param.help if "default" in param.help else f"{param.help} ({default})")
                               if param.help else f"({default})")


def chosen_methods(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``{method: settings}`` the options ask for (those on by default always; their values as given)."""
    from .. import steering

    described = steering_from(args) or {}  # --steering JSON; a method's own options add to it
    out: dict[str, dict[str, Any]] = {}
    for name in steering.methods():
        method = steering.get(name)
        given = {param.name: getattr(args, _dest(method, param)) for param in method.params
                 if getattr(args, _dest(method, param), None) is not None}
        given = {**described.get(name, {}), **given}
        if method.on_by_default or given or name in (getattr(args, "steer", None) or ()) or name in described:
            out[name] = given
    asked = set(getattr(args, "steer", None) or ()) | set(described) | {n for n, g in out.items() if g}
    for name in [n for n in out if steering.get(n).on_by_default and n not in asked]:
        if any(name in steering.get(o).replaces for o in asked):  # e.g. instaboost instead of GUIDE on the tags
            del out[name]
    emphasis = [n for n in out if steering.get(n).spans == "emphasis"]
    emphasize = getattr(args, "emphasize", None)
    if emphasize and not emphasis:
        needs = [next((_flag(m, q) + " " + q.name.upper() for q in m.params if q.required), f"--steer {m.name}")
                 for m in map(steering.get, steering.methods()) if m.spans == "emphasis"]
        raise CLIError(f"--emphasize needs a method that steers emphasised substrings: {' or '.join(needs)}")
    if emphasis and not emphasize:
        raise CLIError(f"{', '.join(emphasis)} needs at least one --emphasize TEXT")
    for name, given in out.items():
        method = steering.get(name)
        missing = [q for q in method.params if q.required and q.name not in given and q.name not in SHARED]
        if missing:
            raise CLIError(f"{name} needs {' '.join(_flag(method, q) + ' ' + q.name.upper() for q in missing)}")
    return out


def _generate_outputs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    from ..api.chain import steered_generation
    from ..prompts.tags import escape_tags, parse_tags

    prompt: Any = prompt_from(args, model.tokenizer)
    raw = isinstance(prompt, str)  # the rule is settled here: a string left as a string is raw text
    if getattr(args, "focus", None) == "auto":
        from ..api.autofocus import focus_input

        prompt = focus_input(model, prompt)
    chosen = chosen_methods(args)
    steering = dict(delta_mid=args.delta_mid, layers=args.layers, max_new_tokens=args.max_new_tokens)
    with _quiet_unsteered():  # the command said so before the model loaded
        result = steered_generation(model, prompt, emphasize=getattr(args, "emphasize", None) or (), steer=chosen,
                                    raw=raw, **steering)
    if args.compare:
        # the same clean text, tags removed (and escaped), so nothing is steered
        def plain(text: str) -> str:
            return escape_tags(parse_tags(text).text)

        unsteered_prompt: Any = plain(args.prompt) if isinstance(prompt, str) else [
            {**m, "content": plain(m["content"])} for m in prompt
        ]
        with _quiet_unsteered():
            result["unsteered"] = steered_generation(model, unsteered_prompt, raw=raw, **steering)["steered"]
    return result


class _quiet_unsteered:
    """Drop the library's "nothing is steered" warning while the command runs (it printed its own)."""

    @staticmethod
    def _filter(record: Any) -> bool:
        return not getattr(record, "attnlens_unsteered", False)

    def __enter__(self) -> None:
        import logging

        logging.getLogger("attnlens.api.chain").addFilter(self._filter)

    def __exit__(self, *exc: Any) -> None:
        import logging

        logging.getLogger("attnlens.api.chain").removeFilter(self._filter)


def precheck(args: argparse.Namespace) -> None:
    """What needs no model, before it loads: the tags parse, and a prompt without tags is said out loud."""
    parsed = [check_tags(args.prompt, "the prompt")]
    if getattr(args, "system", None):
        parsed.append(check_tags(args.system, "--system"))
    if getattr(args, "raw", False) and getattr(args, "system", None):
        raise CLIError("--system needs the chat template; drop --raw")
    check_shape(args, layers="layers")
    steering_given = getattr(args, "emphasize", None) or getattr(args, "focus", None)
    if not steering_given and not any(p.spans for p in parsed):
        warn("the prompt has no tags (<!-> ... <-!>), so nothing is steered; wrap the text to emphasise in tags")


def _run_generate(args: argparse.Namespace) -> int:
    precheck(args)
    if getattr(args, "steer", None) is not None:
        chosen_methods(args)  # method options are checked before the model loads
    model = load_model_for(args)
    result = _generate_outputs(args, model)
    if not args.json:
        how = "the chat template (a user message)" if result["prompt_format"] == "chat" else "as written (raw text)"
        print(f"attnlens: the prompt went to the model through {how}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    elif args.compare:
        title = f"steered ({' + '.join(m.upper() for m in result['methods']) or 'GUIDE'})"
        print(side_by_side("unsteered", result["unsteered"], title, result["steered"]))
    else:
        print(result["steered"])
    return 0


def add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the embedded model, unsteered vs GUIDE-steered, side by side: a new fact in "
                                    "the context, emphasised, changes the answer")
    p.add_argument("--prompt", default=None,
                   help="the tagged prompt to show (default: a CounterFact-style case where steering changes the "
                        "answer)")
    p.add_argument("--max-new-tokens", type=positive_int, default=60, help="tokens to generate at most")
    p.add_argument("--delta-mid", type=number, default=DEMO_DELTA_MID,
                   help="level-2 bias (level 1: half, level 3: double)")
    p.set_defaults(run=_run_demo)


def demo_outputs(model: Any, prompt: str = DEMO_PROMPT, *, delta_mid: float = DEMO_DELTA_MID,
                 max_new_tokens: int = 60) -> dict[str, Any]:
    """The demo's two answers (``unsteered``, ``steered``) to ``prompt``, greedy, as ``attnlens demo`` prints them."""
    args = argparse.Namespace(prompt=prompt, delta_mid=delta_mid, max_new_tokens=max_new_tokens, system=None,
                              layers="all", model=None, raw=False, compare=True, json=False, chat=False, steer=[],
                              emphasize=[], focus=None)
    return _generate_outputs(args, model)


def _run_demo(args: argparse.Namespace) -> int:
    from ..runtime.models import EMBEDDED_NAME

    case = args.prompt is None
    prompt = DEMO_PROMPT if case else args.prompt
    check_tags(prompt, "--prompt")
    print(f"attnlens demo: {EMBEDDED_NAME} (embedded), greedy decoding, GUIDE delta_mid={args.delta_mid} "
          "on the tagged text")
    if case:
        print("The context states an old fact and a new one that contradicts what the model knows; GUIDE "
              "emphasises the new one.")
    print(f"prompt: {prompt}\n")
    model = load_model_for(argparse.Namespace(model=None))
    result = demo_outputs(model, prompt, delta_mid=args.delta_mid, max_new_tokens=args.max_new_tokens)
    print(side_by_side("unsteered", result["unsteered"], f"steered (GUIDE, delta_mid={args.delta_mid})",
                       result["steered"]))
    if case:
        from ..experiments.metrics import contains_answer

        names = {which: [o for o in (DEMO_CASE["new"], DEMO_CASE["old"]) if contains_answer(result[which], [o])]
                 for which in ("unsteered", "steered")}
        print(f"\nthe emphasised fact says {DEMO_CASE['new']}; the unsteered answer names "
              f"{' and '.join(names['unsteered']) or 'neither'}, the steered answer (delta_mid={args.delta_mid}) "
              f"names {' and '.join(names['steered']) or 'neither'}")
    return 0
