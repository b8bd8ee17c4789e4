"""The README runs as written: every bash and python block and every `$ forwardpass ...` line, in the README's
order, in a scratch copy of the checkout (its models, samples and data), so that nothing it writes lands here.

Blocks fenced as `sh` are not run; each line of them must show why: it starts a server that runs until stopped,
needs one running (`--url`), runs `make`, or names a file of the reader's own (`path/to/...`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)
RUN = [(language, body) for language, body in BLOCKS if language in ("bash", "console", "python")]
NOT_RUN = [line for language, body in BLOCKS if language == "sh" for line in body.splitlines() if line.strip()]
WHY_NOT_RUN = re.compile(r"^(\s*#|make |forwardpass serve|FORWARDPASS_\w+=\S+ forwardpass serve)|--url |path/to/")
COPIED = ("models", "samples", "data")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of what the README reads, the checkout's .venv linked in (`source .venv/bin/activate` works there)."""
    folder = tmp_path_factory.mktemp("readme")
    for name in COPIED:
        shutil.copytree(ROOT / name, folder / name, symlinks=True)
    (folder / ".venv").symlink_to(Path(sys.executable).parent.parent)
    env = {
        **os.environ,
        "FORWARDPASS_REPOSITORY": str(folder / "models"),  # else the checkout's own models/ would get new versions
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
    }
    return folder, env


def test_readme_has_examples_and_the_two_commands() -> None:
    assert len(RUN) >= 10 and any(language == "bash" for language, _ in RUN)
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "source .venv/bin/activate" in README.split("## Use it")[0]  # how to get `forwardpass`, before using it


def test_every_block_not_run_says_why() -> None:
    assert NOT_RUN and not [line for line in NOT_RUN if not WHY_NOT_RUN.search(line)]


@pytest.mark.parametrize(("language", "body"), RUN, ids=[f"{i}-{language}" for i, (language, _) in enumerate(RUN)])
def test_block_runs(scratch: tuple[Path, dict[str, str]], language: str, body: str) -> None:
    folder, env = scratch
    if language == "python":
        command = [sys.executable, "-c", body]
    elif language == "console":
        lines = [line[2:] for line in body.splitlines() if line.startswith("$ ")]
        command = ["bash", "-euo", "pipefail", "-c", "\n".join(lines)]
    else:
        command = ["bash", "-euo", "pipefail", "-c", body]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{body}\n{done.stderr[-3000:]}"
    assert done.stdout.strip()
