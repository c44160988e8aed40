"""The API reference: one mkdocstrings entry per name in ``attnlens.__all__``, generated so none is missed.

``attnlens`` exports its names lazily (``attnlens.__getattr__``), so each name is
resolved here to where it is defined (``attnlens.PASTA`` -> ``attnlens.api.pasta.PASTA``)
and documented from there under its public name. The mkdocs hook ``on_page_markdown``
puts the entries in place of the marker ``<!-- api-reference -->`` in ``docs/api.md``.
"""

from __future__ import annotations

import inspect

MARKER = "<!-- api-reference -->"


def defined_at(name: str) -> str:
    """The dotted path where ``attnlens.<name>`` is defined (a module's own name for a module)."""
    import attnlens

    obj = getattr(attnlens, name)
    if inspect.ismodule(obj):
        return obj.__name__
    return f"{obj.__module__}.{obj.__qualname__}"


def api_reference() -> str:
    import attnlens

    out = []
    for name in sorted(attnlens.__all__, key=str.lower):
        out += [f"::: {defined_at(name)}", "    options:", f'      heading: "attnlens.{name}"',
                f'      toc_label: "{name}"', ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:  # mkdocs hook
    if MARKER in markdown:
        return markdown.replace(MARKER, api_reference())
    return markdown


if __name__ == "__main__":
    print(api_reference())
