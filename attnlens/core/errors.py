"""Every exception attnlens raises for input a user can get wrong.

All of them derive from :class:`AttnlensError`, a ``ValueError``, so one
``except AttnlensError`` catches any of them.
"""

from __future__ import annotations


class AttnlensError(ValueError):
    """Base class: a bad argument, tag, span or configuration."""


class TagError(AttnlensError):
    """A malformed steering or influence tag; the message names the position."""

    def __init__(self, message: str, position: int | None = None) -> None:
        super().__init__(message if position is None else f"{message} (at character {position})")
        self.reason = message
        self.position = position


class SpanError(AttnlensError):
    """A token or character span that is empty, reversed or outside the sequence."""


class ModelLoadError(AttnlensError):
    """A model that cannot be found or loaded; the message says what was tried."""


class HeadConfigError(AttnlensError):
    """A PASTA head configuration (``{layer: [heads]}``) that is malformed or out of range."""


class DirectUnavailable(AttnlensError):
    """The model cannot be run directly (see :mod:`attnlens.runtime.direct`); ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot run the model directly: {reason}")
        self.reason = reason


class DescribeError(AttnlensError):
    """The LLM that describes heads failed; ``fatal`` is True when retrying cannot help."""

    def __init__(self, message: str, *, fatal: bool = True, status: int | None = None) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.status = status


class ExperimentError(AttnlensError):
    """A bad experiment configuration, data file or output folder."""


class UpstreamDriftError(AttnlensError):
    """The installed TransformerLens and transformers disagree in a way that would give wrong results."""


class ContextWindowError(AttnlensError):
    """A prompt (plus the tokens to generate) longer than the model's context window."""


class CLIError(AttnlensError):
    """A command-line argument the parser could not reject on its own."""


class SweepError(AttnlensError):
    """A sweep's workers, shard files or launch environment are not usable."""


class PluginError(AttnlensError):
    """A plugin (``--plugin MODULE``, or an entry point of the ``attnlens.plugins`` group) could not be loaded."""


__all__ = [
    "AttnlensError",
    "CLIError",
    "ContextWindowError",
    "DescribeError",
    "DirectUnavailable",
    "ExperimentError",
    "HeadConfigError",
    "ModelLoadError",
    "PluginError",
    "SpanError",
    "SweepError",
    "TagError",
    "UpstreamDriftError",
]
