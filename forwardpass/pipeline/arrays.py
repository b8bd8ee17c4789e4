"""Array files (.npy, and .npz archives of them): the one reader of them, for every command that takes arrays.

A file of arrays is the caller's and may be hostile: an .npy header can declare more than any machine holds, and an
.npz is a zip whose members can expand a thousand times. Both are refused before their data is read, so reading a
file costs about what it holds. Errors are `InputError`s (a `DecodeError` where the file is not what it says) whose
message follows the file's name ("'x.npz' is not a readable ...").
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from forwardpass.errors import DecodeError, InputError

__all__ = ["NPZ_BOMB_BYTES", "NPZ_MAX_RATIO", "read_npy", "read_npz"]

# .npz members that expand more than NPZ_MAX_RATIO times their stored bytes, together to over NPZ_BOMB_BYTES, are a
# zip bomb: numbers compress a few times, and even arrays of mostly zeros that expand further are far smaller. Summed
# over the members, so splitting the zeros into many members each under the limit does not pass either.
NPZ_MAX_RATIO = 100
NPZ_BOMB_BYTES = 64 << 20
_TOO_LARGE = "declares an array larger than this machine's memory in its header"


def read_npy(path: Path) -> np.ndarray:
    """The array of an .npy file; a pickle, a damaged file or a header declaring more than memory holds is refused."""
    try:
        with path.open("rb") as file:
            # read_array, not np.load: it insists on the .npy header instead of guessing the file is a pickle or a zip
            return np.lib.format.read_array(file, allow_pickle=False)
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror})") from None
    except (ValueError, EOFError) as exc:
        raise DecodeError(f"is not a readable .npy array of numbers ({exc})") from None
    except MemoryError:  # numpy allocates the shape its header declares before it reads a byte
        raise DecodeError(_TOO_LARGE) from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz archive by name; a zip bomb is refused before any member is decompressed."""
    try:
        _refuse_zip_bomb(path)
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, AttributeError, RuntimeError, zipfile.BadZipFile) as exc:
        # RuntimeError: an encrypted member, which zipfile cannot read without a password
        raise DecodeError(f"is not a readable .npz archive of arrays ({exc})") from None
    except MemoryError:
        raise DecodeError(_TOO_LARGE) from None


def _refuse_zip_bomb(path: Path) -> None:
    """Refuses an archive whose highly compressed members declare more than NPZ_BOMB_BYTES in all, unread.

    The sizes are the zip's own records; a member that declares less than it holds is no way around this, because
    zipfile stops reading a member at the size it declares."""
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.infolist() if m.file_size > NPZ_MAX_RATIO * max(m.compress_size, 1)]
    expanded = sum(member.file_size for member in members)
    if expanded > NPZ_BOMB_BYTES:
        stored = sum(member.compress_size for member in members)
        names = ", ".join(f"'{member.filename}'" for member in members[:3]) + (", ..." if len(members) > 3 else "")
        raise DecodeError(
            f"member{'s' if len(members) > 1 else ''} {names} expand{'' if len(members) > 1 else 's'} {stored:,} "
            f"bytes to {expanded:,} (over {NPZ_MAX_RATIO}x and {NPZ_BOMB_BYTES >> 20} MiB): a zip bomb, refused unread"
        )
