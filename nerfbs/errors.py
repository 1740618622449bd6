"""Errors that reach the user as one line, naming the file and the fix."""


class UserError(Exception):
    """Bad input or an impossible option. The CLI prints the message alone and exits non-zero."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during work that saved its state first; the message says what was saved and how to go on."""
