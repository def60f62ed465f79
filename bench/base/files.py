"""Safe result files: atomic writes (a temporary name in the same folder, fsync, rename: a crash never leaves half
a file), line logs whose lines are complete or absent, and the lock that keeps two runs out of one folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary name in the same folder, fsync, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 text through atomic_write_bytes."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_frame(path: Path, frame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


class LineLog:
    """Append whole lines to one file (one writer per file, so nothing lands between two parts of a line): a line
    that cannot be written in full (a full disk, a file-size limit) is cut back, so a line is complete or absent.

    Opening a file that ends in a partial line (its writer was killed mid-write) first cuts that line off.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.size = complete_lines_size(path)
        if self.size != os.fstat(self.fd).st_size:
            os.ftruncate(self.fd, self.size)

    def write(self, line: str) -> None:
        data = line.encode("utf-8")
        if not data.endswith(b"\n"):
            data += b"\n"
        written = 0
        try:
            while written < len(data):  # a short write (the disk filling up) is followed by one that says why
                written += os.write(self.fd, data[written:])
        except OSError:
            # Take the torn line back before reporting the error; if even that fails, readers skip it (no newline).
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, self.size)
            raise
        self.size += written

    def sync(self) -> None:
        """Flush what was written to the disk (before a checkpoint says it is there)."""
        if self.fd >= 0:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def complete_lines_size(path: Path) -> int:
    """The size of `path` up to and including its last newline (0 if it has none or does not exist)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            pos = size
            while pos > 0:
                step = min(65536, pos)
                f.seek(pos - step)
                chunk = f.read(step)
                at = chunk.rfind(b"\n")
                if at >= 0:
                    return pos - step + at + 1
                pos -= step
            return 0
    except FileNotFoundError:
        return 0


LOCK_NAME = ".lock"


class FolderLock:
    """An exclusive `flock` on DIR/.lock, held while a run writes DIR: a second run into the same folder is refused.

    The kernel drops a flock when its holder exits, however it exits, so a killed run never blocks the next one
    (it may leave an unlocked .lock file, which the next run simply locks). Not inherited by child processes.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_NAME
        self.fd = -1

    def acquire(self) -> bool:
        """Take the lock (True), or False when another process holds it. OSError when DIR is not writable."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            # The previous holder removes the file on release: if it did so after we opened it, our lock is on a
            # file nobody else will look at. Lock the file that is at the path now.
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError:
                os.close(fd)
                raise
            self.fd = fd
            return True

    def holder(self) -> str:
        """The process id written by the holder, or '' when it cannot be read."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def release(self) -> None:
        if self.fd < 0:
            return
        # Removed while still held, so no one can lock the file that is about to disappear (see acquire).
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1
