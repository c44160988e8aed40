"""The command-line reference, generated from the command parsers so it cannot drift from them.

``cli_reference()`` walks ``attnlens.cli.build_parser()`` and every subcommand
parser under it (``heads rank``, ``experiment summarize``, ...) and writes one
section per command: what it does, its usage line and a table of its arguments
(flags, help, default, choices). The mkdocs hook ``on_page_markdown`` puts it in
place of the marker ``<!-- cli-reference -->`` in ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Iterator

MARKER = "<!-- cli-reference -->"


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order they were added."""
    for action in parser._actions:  # argparse keeps its actions here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every command under ``parser``, depth first: (path of names, help, parser)."""
    for name, help_text, sub in _subcommands(parser):
        yield (*path, name), help_text, sub
        yield from walk(sub, (*path, name))


def _cell(text: object) -> str:
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
            continue
        if action.option_strings:
            name = ", ".join(f"`{o}`" for o in action.option_strings)
            if action.nargs != 0:
                name += f" `{action.metavar or action.dest.upper()}`" if action.nargs in (None, 1) else (
                    f" `{action.metavar or action.dest.upper()} ...`")
        else:
            name = f"`{action.metavar or action.dest}`"
        help_text = (action.help or "").replace("%(default)s", str(action.default)).replace("%%", "%")
        default = ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.nargs != 0:
            default = f"`{action.default}`"
        choices = ", ".join(f"`{c}`" for c in action.choices) if action.choices else ""
        rows.append(f"| {name} | {_cell(help_text)} | {default} | {choices} |")
    if not rows:
        return []
    return ["| argument | what it does | default | choices |", "| --- | --- | --- | --- |", *rows, ""]


def _usage(parser: argparse.ArgumentParser) -> str:
    usage = " ".join(parser.format_usage().split())
    return usage.removeprefix("usage: ")


def cli_reference() -> str:
    """The reference as Markdown: the top-level command, then every subcommand, depth first."""
    from attnlens.cli import build_parser

    parser = build_parser()
    parser.formatter_class = argparse.HelpFormatter
    out = ["## attnlens", "", _cell(parser.description or ""), "", "```text", _usage(parser), "```", "",
           *_arguments(parser)]
    for path, help_text, sub in walk(parser):
        title = "attnlens " + " ".join(path)
        out += [f"{'#' * min(len(path) + 2, 4)} {title}", ""]
        if help_text:
            out += [_cell(help_text[0].upper() + help_text[1:]) + ".", ""]
        out += ["```text", _usage(sub), "```", "", *_arguments(sub)]
        if sub.epilog:
            out += ["```text", sub.epilog.removeprefix("example:\n").replace("\n  ", "\n").strip(), "```", ""]
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:  # mkdocs hook
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown


if __name__ == "__main__":
    print(cli_reference())
