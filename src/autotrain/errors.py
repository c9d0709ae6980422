"""Typed errors for problems the user can fix.

Every error carries one line that names what to fix: the file, the line or row, and the column where
there is one. The CLI prints that line and exits 2; the Python API raises the exception.
"""

from __future__ import annotations

from collections.abc import Iterable


class AutoTrainError(Exception):
    """A problem with the user's input, reported as one line."""

    exit_code = 2


class ParamsError(AutoTrainError):
    """A parameter value that cannot work."""


class DataError(AutoTrainError):
    """A data file, row or column that cannot be used."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, column: str | None = None):
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if column is not None:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.line, self.column = path, line, column


class ModelError(AutoTrainError):
    """A model path or config that cannot be loaded."""


class TrainingError(AutoTrainError):
    """Training itself failed (for example a non-finite loss); the message names the step and what to do."""

    exit_code = 1


class PushError(AutoTrainError):
    """The upload to the hub failed after the run finished; the message says how to push the finished run."""

    exit_code = 1


class DiskFull(AutoTrainError):
    """The disk could not hold what the run had to write; the message says what was kept and what was lost."""


class TrainingInterrupted(AutoTrainError):
    """SIGINT or SIGTERM stopped training after a checkpoint was saved; exit code 130 or 143 as a shell expects."""

    def __init__(self, message: str, *, signal_number: int, checkpoint: str | None):
        super().__init__(message)
        self.exit_code = 128 + signal_number
        self.checkpoint = checkpoint


def did_you_mean(value: str, known: Iterable[str], *, most: int = 1, otherwise: str) -> str:
    """The hint for a mistyped name: `did you mean X?` (up to `most` close names, best first), else `otherwise`."""
    import difflib

    close = difflib.get_close_matches(value, list(known), n=most)
    return f"did you mean {', '.join(close)}?" if close else otherwise


def malformed_json(exc: ValueError) -> str:
    """A json.JSONDecodeError as one whole sentence. Python's reason sometimes ends where its position goes
    ("Unterminated string starting at", "Invalid control character at"): the column is said there, not first."""
    reason, column = getattr(exc, "msg", str(exc)), getattr(exc, "colno", None)
    if reason.endswith(" at") and column is not None:
        return f"malformed JSON: {reason} column {column}"
    return f"malformed JSON at column {column}: {reason}"
