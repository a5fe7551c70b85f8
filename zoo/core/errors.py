"""The base of the zoo's user errors: an argument, file, checkpoint or name that the user gave and that cannot be
used as given. Its message says what is wrong, where (file, key, id) and the fix; ``train.py`` prints it as one
paragraph with exit code 2, and the traceback only with ``--debug`` or ``ZOO_DEBUG=1`` (``zoo.cli.run``)."""


class ZooUserError(Exception):
    """A user error: raised with a message that names what is wrong, where, and the fix."""


class PretrainedWeightsError(ZooUserError, ValueError):
    """Weights that cannot be read, do not fit the network they are loaded into, or fail their hash check
    (raised by :mod:`zoo.core.weights` and :mod:`zoo.core.weight_sources`)."""
