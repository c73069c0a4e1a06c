"""Typed errors. The CLI maps each to a one-line message and an exit code; library code only raises."""

from __future__ import annotations


class QtoolError(Exception):
    """A problem the user can fix: bad input, bad option. Exit code 2."""

    exit_code = 2


class UsageError(QtoolError):
    """An option or argument that makes no sense."""


class FormatError(QtoolError):
    """An input file that is malformed, truncated or lies about itself. Name the file (and tensor)."""


class QuantError(QtoolError):
    """Data that cannot be quantized as asked: NaN/Inf, a shape that does not fit the block size."""


class CheckFailed(QtoolError):
    """A check the user asked for (e.g. `inspect --fail-if`) did not hold. Exit code 1."""

    exit_code = 1
