"""open_generator gives the heap that loading freed back to the system (glibc keeps it until malloc_trim), and reads
its tokenizer only from the model's folder."""

from __future__ import annotations

import ctypes
import shutil
import sys
from pathlib import Path

import pytest
import yaml

import forwardpass
from forwardpass.errors import ConfigError
from forwardpass.generation import open_generator
from forwardpass.generation.loader import give_back_freed_heap

BLOCKS = 20_000  # of 1 KB: 20 MB, each below glibc's mmap threshold, so on its heap


def anonymous_mb() -> float:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_freed_heap_pages_go_back_to_the_system() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(1024) for _ in range(BLOCKS)]
    for block in blocks:
        ctypes.memset(block, 1, 1024)  # resident
    for block in blocks[:-1]:  # the last one kept: the freed pages are not the heap's top, which glibc trims itself
        libc.free(block)
    held = anonymous_mb()
    give_back_freed_heap()
    assert anonymous_mb() < held - 10
    libc.free(blocks[-1])


def test_a_tokenizer_outside_the_model_folder_is_not_read(exported: Path, tmp_path: Path) -> None:
    """A handed-over decoder whose config named `generation.tokenizer: ../<file>` made generate read that file."""
    folder = Path(shutil.copytree(exported, tmp_path / "escape"))
    (folder / "tokenizer.json").replace(tmp_path / "outside.json")
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    config["generation"]["tokenizer"] = "../outside.json"
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"generation.tokenizer: '../outside.json' points outside the model folder"):
        open_generator(forwardpass.load(folder))
