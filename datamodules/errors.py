"""The base of the data layer's user errors: a file, folder or value of the user's data that cannot be used as
given. Its message names what is wrong, where (file, row, id) and the fix; ``train.py`` prints it as one paragraph
(exit code 2) instead of a traceback (``zoo.cli.run``)."""


class DataError(Exception):
    """A user error in the data: raised with a message that names the file and the fix."""


def describe_error(err: BaseException) -> str:
    """``Type: message`` of an exception, never blank: an HTTP error's status, a ``URLError``'s reason (the socket
    error inside it, with its type), else the message, else the cause's description, else ``(no message)``."""
    from urllib.error import HTTPError, URLError

    if isinstance(err, HTTPError):
        return f"HTTPError: {err.code} {err.reason}".rstrip()
    if isinstance(err, URLError):
        reason = err.reason
        inner = describe_error(reason) if isinstance(reason, BaseException) else " ".join(str(reason).split())
        return f"URLError: {inner or '(no reason given)'}"
    message = " ".join(str(err).split())
    cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    if message:
        return f"{type(err).__name__}: {message}"
    if cause is not None:
        return f"{type(err).__name__} (no message), caused by {describe_error(cause)}"
    return f"{type(err).__name__} (no message)"
