"""The one way snnrun writes a file: whole or not at all, and durable once written.

``write_atomic`` writes to a temporary name beside the target (with this process's id, so two
processes never share one), fsyncs it, renames it over the target and fsyncs the folder, so
the rename itself survives a crash. If anything fails the temporary file is removed and the
previous file is left as it was. ``append_line`` adds one line to a log and first cuts a torn
last line (a crash in the middle of an append), so every line of the file parses.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

log = logging.getLogger("snnrun")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform that cannot open folders (Windows): the rename is as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, content: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``content`` (bytes, text, or a function that writes a given path) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(content.encode() if isinstance(content, str) else content)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(path.parent)
    return path


def write_json_atomic(path: str | Path, data) -> Path:
    return write_atomic(path, json.dumps(data, indent=2) + "\n")


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` and a newline durably; a torn last line left by a crash is cut off first."""
    path = Path(path)
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                text = f.read()
                keep = text.rfind(b"\n") + 1
                log.warning("%s ended in a torn line (%d bytes, cut): %r", path, size - keep, text[keep:keep + 80])
                f.truncate(keep)
        f.write(line.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
