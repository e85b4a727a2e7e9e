"""The error type a job raises for bad user input (printed as one line, exit code 2)."""

from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a missing file, a bad value, an impossible target."""
