"""The argument parser of every ``supervisor`` command and subcommand.

Two changes to :class:`argparse.ArgumentParser`, inherited by every subparser (``add_subparsers``
creates them with the class of the parser it is called on):

- an error is one line and a hint (``supervisor: error: <msg>`` / ``try 'supervisor push
  --help'``), exit code 2, instead of the whole usage block;
- a value that starts with ``-`` is taken as the value of the option before it when it names no
  option of the command: ``--every -30s`` is read as ``--every=-30s``, so the option's own check
  says "must be positive" instead of argparse's "expected one argument".
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import NoReturn

from supervisor.config_values import MAX_SECONDS
from supervisor.errors import ExitCode

_PROG_ATTR = "_supervisor_prog"  # the innermost (sub)command that parsed, for the hint


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with one-line errors and dash-leading option values."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        tokens = list(sys.argv[1:] if args is None else args)
        ns, extras = super().parse_known_args(self.glue_dash_values(tokens), namespace)
        if not hasattr(ns, _PROG_ATTR):
            setattr(ns, _PROG_ATTR, self.prog)
        return ns, extras

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        ns, extras = self.parse_known_args(args, namespace)
        prog = getattr(ns, _PROG_ATTR, self.prog)
        if hasattr(ns, _PROG_ATTR):
            delattr(ns, _PROG_ATTR)
        if extras:
            self._fail(prog, f"unrecognized arguments: {' '.join(extras)}")
        return ns

    def glue_dash_values(self, tokens: list[str]) -> list[str]:
        """``[--opt, -30s]`` -> ``[--opt=-30s]`` for an option of this parser that takes one
        value, when ``-30s`` is not (a prefix of) one of its option strings."""
        out: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if token == "--":
                out.extend(tokens[i:])
                break
            action = self._option_string_actions.get(token)
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if (
                action is not None
                and action.nargs in (None, 1)
                and nxt is not None
                and nxt.startswith("-")
                and nxt != "--"
                and not self._names_an_option(nxt)
            ):
                out.append(f"{token}={nxt}")
                i += 2
                continue
            out.append(token)
            i += 1
        return out

    def _names_an_option(self, token: str) -> bool:
        name = token.split("=", 1)[0]
        if name in self._option_string_actions:
            return True
        return name.startswith("--") and any(
            o.startswith(name) for o in self._option_string_actions
        )

    def error(self, message: str) -> NoReturn:
        self._fail(self.prog, message)

    def _fail(self, prog: str, message: str) -> NoReturn:
        root = prog.split(maxsplit=1)[0] if prog else "supervisor"
        self.exit(int(ExitCode.USAGE), f"{root}: error: {message}\ntry '{prog} --help'\n")


def positive_seconds(text: str) -> float:
    """An argparse ``type``: a finite number of seconds > 0 (and at most ten years)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value
