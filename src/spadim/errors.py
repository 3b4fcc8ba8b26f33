"""User-facing errors: one line, naming the file and the fix; the CLI exits with code 2."""


class SpadimError(Exception):
    """Bad input or configuration. The message is shown to the user as is."""
