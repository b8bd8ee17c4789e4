"""Array files as every command reads them: plain ones whole, hostile ones refused before their data is read."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from forwardpass.errors import DecodeError
from forwardpass.pipeline.arrays import NPZ_BOMB_BYTES, read_npy, read_npz


def write_npz_bomb(path: Path, *, members: int = 1, member_bytes: int = 256 << 20) -> Path:
    """An .npz of float32 zeros that stores a thousandth of what it expands to: `members` arrays of `member_bytes`."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(members):
            with archive.open(f"x{index}.npy", "w", force_zip64=True) as member:
                header = {"descr": "<f4", "fortran_order": False, "shape": (member_bytes // 16, 4)}
                np.lib.format.write_array_header_1_0(member, header)
                for _ in range(member_bytes >> 22):
                    member.write(bytes(1 << 22))
    return path


def write_npy_declaring_a_terabyte(path: Path) -> Path:
    """An .npy of no data whose header declares 2^40 rows of 4 float32s."""
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 4), }".ljust(117) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    return path


def test_plain_arrays_are_read_whole(tmp_path: Path) -> None:
    zeros = np.zeros((1000, 8), dtype=np.float32)  # compresses well, but it is 32 KB: no bomb
    numbers = np.random.default_rng(0).normal(size=(50, 3))
    np.savez_compressed(tmp_path / "data.npz", x=zeros, y=numbers, label=np.arange(1000))
    np.save(tmp_path / "data.npy", numbers)
    arrays = read_npz(tmp_path / "data.npz")
    assert sorted(arrays) == ["label", "x", "y"]
    np.testing.assert_array_equal(arrays["x"], zeros)
    np.testing.assert_array_equal(arrays["y"], numbers)
    np.testing.assert_array_equal(read_npy(tmp_path / "data.npy"), numbers)


def test_a_zip_bomb_is_refused_unread(tmp_path: Path) -> None:
    write_npz_bomb(tmp_path / "bomb.npz")
    with pytest.raises(DecodeError, match=r"'x0.npy' expands [\d,]+ bytes to 268,435,584 .*a zip bomb, refused unread"):
        read_npz(tmp_path / "bomb.npz")


def test_a_bomb_split_into_members_each_under_the_limit_is_refused_too(tmp_path: Path) -> None:
    """The bound was per member: 8 members of 48 MiB of zeros (a 0.4 MB file) were each under 64 MiB and read."""
    member_bytes = 48 << 20
    assert member_bytes < NPZ_BOMB_BYTES
    write_npz_bomb(tmp_path / "bomb.npz", members=8, member_bytes=member_bytes)
    assert (tmp_path / "bomb.npz").stat().st_size < 1 << 20
    with pytest.raises(DecodeError, match=r"members 'x0.npy', 'x1.npy', 'x2.npy', \.\.\. expand .*a zip bomb"):
        read_npz(tmp_path / "bomb.npz")


def test_an_npy_declaring_more_than_memory_is_refused(tmp_path: Path) -> None:
    write_npy_declaring_a_terabyte(tmp_path / "huge.npy")
    with pytest.raises(DecodeError, match="declares an array larger than this machine's memory"):
        read_npy(tmp_path / "huge.npy")


def test_what_is_no_plain_array_file_is_refused(tmp_path: Path) -> None:
    pickled = np.array([{"a": 1}], dtype=object)
    np.save(tmp_path / "pickled.npy", pickled, allow_pickle=True)
    np.savez(tmp_path / "pickled.npz", x=pickled)
    (tmp_path / "text.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "zip.npz", x=np.zeros(3))
    (tmp_path / "zip.npz").rename(tmp_path / "zip.npy")  # an .npz named .npy: np.load would have opened it
    for name in ("pickled.npy", "zip.npy"):
        with pytest.raises(DecodeError, match=r"is not a readable \.npy array"):
            read_npy(tmp_path / name)
    for name in ("pickled.npz", "text.npz"):
        with pytest.raises(DecodeError, match=r"is not a readable \.npz archive"):
            read_npz(tmp_path / name)
