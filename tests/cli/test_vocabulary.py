"""One CLI vocabulary: the same meaning has the same option name and short letter in every subcommand, argument
names are upper-case, and no --help shows a type beside a flag."""

from __future__ import annotations

import subprocess
from collections import defaultdict

import pytest
import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from forwardpass.cli import COMMANDS, build_app
from forwardpass.cli.common import VOCABULARY
from forwardpass.cli.help import polish

from .conftest import FORWARDPASS

# Subcommands that load a model, so that a pickled one needs --trust-pickle there too.
LOADS_A_MODEL = {"predict", "models", "eval", "bench", "batch", "stream", "serve", "convert", "generate"}


def _commands() -> dict[str, object]:
    group = typer.main.get_command(build_app())
    polish(group)
    assert isinstance(group, TyperGroup)
    return dict(group.commands)


COMMAND_OBJECTS = _commands()


def _options() -> list[tuple[str, TyperOption]]:
    return [
        (name, param)
        for name, command in COMMAND_OBJECTS.items()
        for param in command.params  # type: ignore[attr-defined]
        if isinstance(param, TyperOption)
    ]


def test_every_command_is_registered() -> None:
    assert set(COMMAND_OBJECTS) == set(COMMANDS)


def test_a_shared_meaning_has_one_long_name_and_one_short_letter() -> None:
    wrong = []
    letters: dict[str, set[str]] = defaultdict(set)
    for command, option in _options():
        longs = [o for o in option.opts + option.secondary_opts if o.startswith("--")]
        shorts = {o for o in option.opts + option.secondary_opts if not o.startswith("--")}
        for short in shorts:
            letters[short].update(longs)
        for name in longs:
            if name in VOCABULARY and shorts != ({VOCABULARY[name]} - {None}):
                wrong.append(f"{command} {name}: short {sorted(shorts)}, the vocabulary says {VOCABULARY[name]}")
    wrong += [f"{short} means {sorted(names)}" for short, names in letters.items() if len(names) > 1]
    assert not wrong


def test_no_option_is_a_synonym_of_another() -> None:
    """`--out` beside `--output`, `--batch-sizes` beside `--batch-size`: one is a truncation or plural of the other."""
    names = {o for _, option in _options() for o in option.opts + option.secondary_opts if o.startswith("--")}
    synonyms = [
        (short, long)
        for short in names
        for long in names
        if short != long and long.startswith(short) and long[len(short)] != "-"  # --stop vs --stop-token-id is fine
    ]
    assert not synonyms
    assert not names & {"--max-batch", "--max-batch-size", "--repo", "--model-version", "--num-threads"}


@pytest.mark.parametrize("command", sorted(COMMAND_OBJECTS))
def test_arguments_are_upper_case_and_outputs_are_options(command: str) -> None:
    arguments = [p for p in COMMAND_OBJECTS[command].params if isinstance(p, TyperArgument)]  # type: ignore[attr-defined]
    assert all(a.metavar and a.metavar.isupper() for a in arguments)
    assert "OUTPUT" not in [a.metavar for a in arguments]  # where a command writes is always -o/--output


@pytest.mark.parametrize("command", sorted(LOADS_A_MODEL))
def test_commands_that_load_a_model_take_trust_pickle(command: str) -> None:
    options = [p for p in COMMAND_OBJECTS[command].params if isinstance(p, TyperOption)]  # type: ignore[attr-defined]
    trust = [o for o in options if "--trust-pickle" in o.opts]
    assert trust and trust[0].envvar == "FORWARDPASS_TRUST_PICKLE"


def test_help_shows_no_type_beside_a_flag_and_version_names_the_libraries() -> None:
    for command in ("batch", "bench"):
        shown = subprocess.run([FORWARDPASS, command, "--help"], capture_output=True, text=True, check=True).stdout
        assert "--resume" in shown or "--json" in shown
        assert "<bool>" not in shown
    version = subprocess.run([FORWARDPASS, "--version"], capture_output=True, text=True, check=True).stdout
    assert version.startswith("forwardpass ") and "onnxruntime " in version and "numpy " in version
