"""The project's own error type: failures caused by the user's input.

The CLI turns exactly these into one line on stderr with exit code 2. Anything else is a
bug (ours or a library's) and keeps its traceback, so never raise these for internal
invariants. The subclasses also derive from the matching built-in, so callers that catch
ValueError / FileNotFoundError around the library keep working.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class for failures caused by the user's input (config, data, checkpoints)."""


class ConfigError(UserError, ValueError):
    """A config key or value is wrong; the message names the key."""


class DataError(UserError, ValueError):
    """The data (a dataset, a source, a table, a file's content) cannot serve the run."""


class InputNotFoundError(UserError, FileNotFoundError):
    """A file, directory or checkpoint the user named does not exist."""


class CheckpointError(UserError):
    """A checkpoint cannot be restored into this run (another model, unreadable, corrupt)."""


class DoesNotFitError(UserError):
    """The run's step does not fit the target chip's memory (as its compiler says)."""
