"""Bad input: the one family of errors a script reports as a message (exit status 2) instead of a traceback.

Every message names the file (and the row or member) at fault, so a user can fix it. Anything else that goes wrong
is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """Bad input from the user: a file, a row, a flag. The message says which and why."""


class ImageError(InputError):
    """An image that cannot be decoded; the message is the reason written to errors.csv."""


class LabelFileError(InputError):
    """A label, manifest or box file that cannot be read, with the file and row in the message."""


class EnvironmentFault(OSError):
    """Not the input's fault: a file that cannot be read or written now (permission, a full disk, a file gone, another
    file system). A run stops on it with one line, and what it was doing is not marked done, so that a rerun after
    the fix completes it; bad input, in contrast, is recorded once and for all."""
