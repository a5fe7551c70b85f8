"""The base of the data layer's user errors: a file, folder or value of the user's data that cannot be used as
given. Its message names what is wrong, where (file, row, id) and the fix; ``train.py`` prints it as one paragraph
(exit code 2) instead of a traceback (``zoo.cli.run``)."""


class DataError(Exception):
    """A user error in the data: raised with a message that names the file and the fix."""
