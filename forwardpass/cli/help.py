"""One look for every subcommand's --help: whole sentences that wrap at the terminal's width, upper-case argument
names, and no type shown for flags (a flag takes no value, so `<bool>` beside it only misleads)."""

from __future__ import annotations

import inspect

from typer._click import Command, Context
from typer.core import TyperArgument, TyperGroup, TyperOption

__all__ = ["polish", "reflow"]


def polish(command: Command) -> None:
    """`command` and its subcommands, in place."""
    if command.help:
        command.help = reflow(command.help)
    help_option = command.get_help_option(Context(command))  # made (and cached) on first use: made here
    for param in [*command.params, *([help_option] if help_option else [])]:
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""
        elif isinstance(param, TyperArgument) and param.metavar is None:
            param.metavar = (param.name or "").upper()
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            polish(sub)


def reflow(text: str) -> str:
    """Lines of a paragraph joined, so that the help wraps them at the terminal's width instead of where the source
    broke them; paragraphs with an indented line (examples, lists) stay as written."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(
        p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n")) for p in paragraphs
    )
