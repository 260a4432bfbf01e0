"""One writer per output folder: an exclusive lock held for a command's whole run.

A command that writes a folder (a study, a model run, an SAE output) takes `exclusive(folder, ...)`
before it looks at the folder and keeps it until it exits. A second command on the same folder is
refused at once with one line naming the holder (pid, host, start time). The lock is `flock` on a
small file beside the folder, `.NAME.lock`: beside, not inside, because an SAE output is built in a
staging folder and swapped in whole, and a study folder must stay exactly what the study wrote. The
file holds the holder's pid, host and start time, and is removed when the command ends.

The kernel drops an flock when the process that holds it dies, SIGKILL included, so a killed run
never leaves a lock that blocks the next one: its file stays, unlocked, saying who held it last, and
the next command takes it over. Removing the file while holding it is safe because a taker checks,
once it holds the lock, that the path still names the file it locked, and retries if not. Worker
processes (the process pool, Ray) do not inherit the lock (the file is opened close-on-exec): they
write only inside the folder, for the driver that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from husai.errors import HusaiError


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def holder(folder: str | Path) -> dict | None:
    """Who holds (or last held) the lock of `folder`, as its lock file says; None if it says
    nothing."""
    try:
        info = json.loads(lock_path(folder).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _describe(info: dict | None) -> str:
    if not info:
        return "another husai process (it has not written its name yet)"
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started", 0)))
    return (
        f"{info.get('command', 'husai')} (pid {info.get('pid')} on {info.get('host')}, "
        f"started {started})"
    )


@contextmanager
def exclusive(folder: str | Path, command: str, flag: str) -> Iterator[None]:
    """Hold the lock of `folder` for the block. Raises HusaiError (one line: who holds it, how to
    wait or stop it) if another process holds it, or if the lock file cannot be made."""
    folder = Path(folder)
    path = lock_path(folder)
    fd = _acquire(path, folder, flag)
    try:
        me = dict(command=command, pid=os.getpid(), host=socket.gethostname(), started=time.time())
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(
                path
            )  # while still held: a process that opened it meanwhile sees it gone and retries
        os.close(fd)  # releases the lock


def _acquire(path: Path, folder: Path, flag: str) -> int:
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise HusaiError(f"cannot write {flag} {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            info = holder(folder)
            pid = info.get("pid") if info else None
            stop = (
                f"stop it (kill {pid})"
                if pid and info.get("host") == socket.gethostname()
                else "stop it"
            )
            raise HusaiError(
                f"{flag} {folder} is in use by {_describe(info)}: wait for it to finish or {stop}, "
                f"then run this command again"
            ) from None
        except OSError as e:  # a file system without flock: say so rather than run unguarded
            os.close(fd)
            raise HusaiError(
                f"cannot lock {flag} {folder} ({e.strerror or e}): husai needs flock there"
            ) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder we waited on removed this file as it let go: take the new one
