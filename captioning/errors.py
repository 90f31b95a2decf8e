"""Errors that the `captioning` command reports in one line: the user can fix them from the message alone.

Anything else is unexpected (a bug, CUDA out of memory, an NCCL failure) and keeps its full traceback: an internal
check raises a plain ValueError or RuntimeError, bad input a UserError. Standard library only, so that every part of
the package, `model/` included, can raise them.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input (a path, a config value, a checkpoint): the message names the file, the field or the value.

    A ValueError, so that callers that catch ValueError for bad input keep working.
    """


class CheckpointError(UserError):
    """A file that is not a readable captioning checkpoint: truncated, not ours, or carrying pickled code."""


class TrainingDiverged(UserError):
    """Training stopped: too many steps in a row had a non-finite loss or gradient, or the weights became
    non-finite. The usual fixes are settings (a lower learning rate, fp32 or bf16 instead of fp16)."""


class UserNotice(UserWarning):
    """A warning about the user's data or settings (an unreadable image, a missing one, an option that cannot take
    effect): the `captioning` command prints it as one line, `warning: ...`, without the source line it came from."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when the message is empty."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__
