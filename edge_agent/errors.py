"""Errors that carry one sentence for the user.

Every error the user can cause or fix (bad input, bad config, a missing
optional dependency, an unreachable service) is an :class:`EdgeAgentError`
whose message is one clear sentence saying what is wrong and what to do.
The CLI prints that sentence and exits non-zero; it never shows a traceback
for these.
"""


class EdgeAgentError(Exception):
    """Base class: ``str(err)`` is a complete sentence for the user."""

    exit_code = 1


class ConfigError(EdgeAgentError):
    """The configuration (file, flags or environment) is invalid."""

    exit_code = 2


class MissingDependency(EdgeAgentError):
    """An optional dependency (TensorRT, pycuda, ...) is not installed."""

    exit_code = 3
