"""User-facing errors: one line, naming the problem and the fix; the CLI exits with code 2.

A message names a parameter as the Python caller knows it, in backticks: `far`, or with a value
`far=0.01`. The command line shows each such name that one of its flags sets as that flag
(``--far``, ``--far 0.01``: :func:`spadim.cli.errors.with_flags`), so both readers get a fix they
can type."""


class SpadimError(Exception):
    """Bad input or configuration. The message is shown to the user as is (parameters in backticks)."""
