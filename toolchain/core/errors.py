"""The one exception type the command line prints cleanly."""


class ToolchainError(Exception):
    """A problem with the user's input or environment.

    The message names the file (or field) and the problem; the CLI prints it
    without a traceback and exits non-zero.
    """
