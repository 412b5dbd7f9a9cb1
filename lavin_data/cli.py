"""What every command line of the project shares: its ``--help`` formatter and its error line."""

from __future__ import annotations

import argparse
import sys


def fail(message: object, code: int = 2) -> int:
    """Print ``error: <message>`` on stderr, the one line a command gives for a user's mistake
    (no traceback), and return the exit status ``code`` (2: bad input; 3: a quality gate)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, ``(default: X)``, where it has one worth showing:
    not for required options, None (the help says in words what happens instead) or flags."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if (action.required or action.default in (None, argparse.SUPPRESS)
                or (action.nargs == 0 and action.default is False)):
            return action.help or ""
        return super()._get_help_string(action)
