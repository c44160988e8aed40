"""Tag parsing on adversarial input: 1 MB of each pattern through parse_tags, escape_tags and has_tags.

    python benchmarks/bench_tags.py [--mb 1]

Prints the CPU seconds each function takes on each input (CPU time, so a busy
machine does not inflate it) and the worst case. The scan is linear, so
doubling --mb roughly doubles every figure. No model, so no --device/--dtype/--shape.
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


if __name__ == "__main__":
    main()
