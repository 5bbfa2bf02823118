"""Errors that describe a user's mistake (the CLI prints them as one ``error:`` line).

Errors of other kinds, raised deep inside for a bug rather than for bad input, keep their
traceback.
"""

from __future__ import annotations


class UsageError(Exception):
    """A command was called with options that do not make sense together or are out of range."""


class DatasetError(ValueError):
    """A dataset file or entry cannot be used; the message names the file and the entry."""


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class CheckpointError(RuntimeError):
    """A weights file cannot be read, downloaded or used, or does not fit the model."""
