"""Atomic replacement of files and directories: readers see the old version or the new one,
never a torn one.

Everything the project writes for others to read while it may be interrupted (checkpoints,
archive structure, simulation state, forecast stores, a job's resume state and scores, metrics
files) goes through `replacing`: the content is written under a temporary sibling name and then
renamed over the target (`os.replace`, atomic on POSIX within a file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike[str], suffix: str = ".tmp", *, unique: bool = False, sync: bool = False
) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; rename it over ``path`` on success.

    Args:
      path: the file or directory to create or replace (a directory can only be created: POSIX
        cannot rename a directory over a non-empty one).
      suffix: appended to the temporary name (``.tmp.npz`` where numpy insists on ``.npz``).
      unique: put the process id in the temporary name, for targets that several processes
        replace (each writes its own temporary file; the last rename wins).
      sync: flush the written file to disk before the rename, so a power cut cannot leave a
        renamed but empty file (for what is expensive to remake: checkpoints, simulation state).

    A temporary left by an earlier crash is removed first; on an error the temporary is removed
    and the target left as it was.
    """
    target = Path(path)
    pid = f".{os.getpid()}" if unique else ""
    tmp = target.with_name(f"{target.name}{pid}{suffix}")
    _remove(tmp)
    try:
        yield tmp
        if sync and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes, *, sync: bool = False) -> Path:
    """Replace the file ``path`` by ``data`` atomically (see `replacing`); returns the path."""
    target = Path(path)
    with replacing(target, sync=sync) as tmp:
        tmp.write_bytes(data)
    return target


__all__ = ["replacing", "write_bytes"]
