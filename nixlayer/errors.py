"""The error type nixlayer raises for bad input and failed operations, and its warning type."""


class NixlayerError(Exception):
    """Bad input or a failed operation.

    ``str(error)`` is a single line meant for the user: it names the culprit (the store path,
    file, parameter or registry) and says what is wrong. Callers print it as
    ``nixlayer: error: <message>`` and exit non-zero.
    """


class NixlayerWarning(UserWarning):
    """Input that works but may not do what the user wants; printed as ``nixlayer: warning: ...``."""
