"""One exception type for every user-facing failure (bad input, unknown name, missing data).

The CLI prints ``ddbench: error: <message>`` for these and exits non-zero without a traceback;
it prints a failed file operation (:class:`OSError`: a read-only folder, a full disk) the same
way, through :func:`os_error_message`.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path


class DDBenchError(Exception):
    """A problem the user can fix; the message names it and says what to do."""


_WHY = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.EISDIR: "is a directory",
    errno.ELOOP: "symlink loop",
    errno.ENAMETOOLONG: "file name too long",
}
_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _under(path: str, root: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(root)))
    except (OSError, ValueError):
        return False


def os_error_message(e: OSError, roots: Iterable[tuple[Path, str, str]] = ()) -> str:
    """One line for a failed file operation: the path, why it failed and what to do.

    ``roots``: ``(folder, what it is, the variable that moves it)``, e.g. the data root and
    ``DDBENCH_DATA``; a path that cannot be written under one of them names the variable.
    """
    why = _WHY.get(e.errno) or (e.strerror or str(e) or type(e).__name__).lower()
    path = e.filename2 if e.filename2 is not None else e.filename
    msg = f"{os.fsdecode(path)}: {why}" if path is not None else why
    if path is not None and e.errno in _UNWRITABLE + (errno.ENOSPC, errno.EDQUOT):
        for root, what, variable in roots:
            if _under(os.fsdecode(path), root):
                return f"{msg} (in the {what} {root}; set {variable} to a writable folder)"
    if e.errno in _UNWRITABLE:
        msg += " (choose a writable output: --out, hydra.run.dir=..., or another folder)"
    elif e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg += " (free some space, or write to another disk)"
    return msg
