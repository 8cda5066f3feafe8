"""Errors that mean "the input is wrong", reported to users as one line, not a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Base class for failures caused by the user's input (config, data, workdir)."""


# Standard exceptions our checks raise for bad input; the CLI reports them in one line too.
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, ValueError, FileNotFoundError)
