"""User-facing errors: the CLI prints their message on one line and exits non-zero (no traceback)."""


class UserError(Exception):
    """Bad input from the user (flag, path, model spec, config). The message is shown as-is."""
