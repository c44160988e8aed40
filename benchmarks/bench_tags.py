"""Tag parsing on adversarial input: 1 MB of each pattern through parse_tags, escape_tags and has_tags.

    python benchmarks/bench_tags.py [--mb 1]

Prints the CPU seconds each function takes on each input (CPU time, so a busy
machine does not inflate it) and the worst case. The scan is linear, so
doubling --mb roughly doubles every figure. No model, so no --device/--dtype/--shape.

Then the time to prepare a prompt with 1,000 and 10,000 GUIDE spans (parse the tags,
tokenize with the embedded model's tokenizer, map every span to its tokens) and the
ratio of the two, which is about 10 when preparing is linear (``--spans 0`` skips it).
"""

from __future__ import annotations

import argparse
import time

from attnlens.core.errors import TagError
from attnlens.prompts.tags import escape_tags, has_tags, parse_tags


def inputs(size: int) -> dict[str, str]:
    def fill(unit: str, tail: str = "") -> str:
        return unit * ((size - len(tail)) // len(unit)) + tail

    return {
        "backslashes then x": fill("\\", "x"),
        "backslashes then a tag": fill("\\", "<!->"),
        "backslash runs between tags": fill("\\\\\\<!->"),
        "many spans": fill("<!->x<-!>"),
        "escaped tags": fill("\\<!->"),
        "tag prefixes '<!'": fill("<!"),
        "tag prefixes '<-'": fill("<-"),
        "unbalanced at the end": fill("x", "<!->"),
        "unicode text": fill("ü€漢 "),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0, help="input size in MB (characters / 1e6)")
    parser.add_argument("--spans", type=int, default=10_000, help="the most GUIDE spans to prepare (0: skip)")
    args = parser.parse_args()
    size = int(args.mb * 1_000_000)
    worst = 0.0
    print(f"{'input':<30} {'parse_tags':>11} {'escape_tags':>12} {'has_tags':>9}")
    for name, text in inputs(size).items():
        row = []
        for function in (parse_tags, escape_tags, has_tags):
            start = time.process_time()
            try:
                function(text)
            except TagError:
                pass
            elapsed = time.process_time() - start
            worst = max(worst, elapsed)
            row.append(elapsed)
        print(f"{name:<30} {row[0]:>10.3f}s {row[1]:>11.3f}s {row[2]:>8.3f}s")
    print(f"worst case on {args.mb:g} MB: {worst:.3f} s CPU")
    if args.spans:
        prepare_spans(args.spans)


def prepare_spans(largest: int) -> None:
    """CPU seconds to prepare prompts of largest/10 and largest GUIDE spans, and their ratio."""
    from attnlens.prompts.prompt import tokenize_prompt
    from attnlens.runtime.models import load_embedded_tokenizer

    tokenizer = load_embedded_tokenizer()
    tokenize_prompt(tokenizer, "<!-> warm up <-!>")
    times = []
    for n in (largest // 10, largest):
        text = " ".join(f"<!-> word{i} <-!>" for i in range(n))
        start = time.process_time()
        prompt = tokenize_prompt(tokenizer, text)
        times.append(time.process_time() - start)
        print(f"prepare {n:>6,} spans ({len(prompt.input_ids):,} tokens): {times[-1]:.3f} s CPU")
    print(f"ratio {largest:,} / {largest // 10:,} spans: {times[1] / max(times[0], 1e-9):.1f} "
          "(at most about 10 when preparing is linear; 100 when quadratic)")


if __name__ == "__main__":
    main()
