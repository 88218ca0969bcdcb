"""Atomic file writes: write to a temporary name in the same folder, then ``os.replace``.

A reader never sees a half-written file under its final name, and an interrupted writer
(exception, SIGTERM, Ctrl-C) leaves nothing under the final name and cleans its temporary. A write
that runs out of room (disk full, quota, file-size limit) is one line naming the file
(:class:`WriteError`). Two processes writing the same output at once each write their own
temporary (the process id is in its name) and each rename is whole: the file is one of theirs,
never a mix.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_terminating = False  # set by the SIGTERM handler of exit_cleanly_on_sigterm()


def tmp_name(final: str | Path) -> Path:
    """The temporary name used for ``final``: hidden, in the same folder, unique per process."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


class WriteError(OSError):
    """A file that could not be written for lack of room (:func:`room_message`); nothing was
    published and its temporary is gone. ``str()`` is the one line to show."""


#: the errnos of "no room for this file", each with its meaning in words
ROOM_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large (the file-size limit, `ulimit -f`, or the file system's)"}


def room_message(path: str | Path, e: OSError, needed: int | None = None) -> str:
    """One line for a write that ran out of room (``e.errno`` in :data:`ROOM_ERRNOS`): the file
    (its final name when ``path`` is a temporary, ``.<name>.tmp[-<pid>]``), the errno's meaning, how much
    was written when it failed, how much the whole file needed when known (``needed``, bytes) and
    how much is free."""
    path = Path(path)
    final = path.with_name(re.sub(r"^\.(.+)\.tmp(-\d+)?$", r"\1", path.name))  # a temporary's final name
    written = path.stat().st_size if path.is_file() else 0
    try:
        free = f", {size_text(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = ""
    need = f"; it needs about {size_text(needed)}" if needed else ""
    return (f"{final}: could not write it: {ROOM_ERRNOS[e.errno]} after {size_text(written)}{need}{free}; "
            "nothing was published and no temporary is left: make room (or raise the limit) and run again")


def size_text(n: int) -> str:
    """Bytes in words: ``8.0 kB``, ``1.2 MB``, ``3.4 GB`` (powers of 1000)."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def is_out_of_room(e: BaseException) -> bool:
    """An ``OSError`` meaning no room for the file (:data:`ROOM_ERRNOS`), not yet described."""
    return isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno in ROOM_ERRNOS


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``final``, on any exception delete it.

    The caller writes the whole file to the yielded path. Raises whatever the body raises, except
    that running out of room (disk full, file-size limit) is raised as :class:`WriteError`, one line
    naming ``final`` (:func:`room_message`).
    """
    final = Path(final)
    tmp = tmp_name(final)
    try:
        yield tmp
        publish(tmp, final)
    except OSError as e:
        if is_out_of_room(e):
            raise WriteError(room_message(tmp, e)) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def publish(tmp: str | Path, final: str | Path) -> None:
    """``os.replace(tmp, final)``, unless a SIGTERM arrived: its SystemExit may have been swallowed
    (a signal handler can run inside a ``__del__``), so the flag is checked here, at the rename."""
    if _terminating:
        raise SystemExit(128 + signal.SIGTERM)
    os.replace(tmp, final)


def check_apart(out: str | Path, sources: list[tuple[str, str | Path]], what: str) -> None:
    """Refuse, before anything is written, an output folder ``out`` that is, contains or is inside
    one of ``sources`` (``(flag, path)`` pairs) of the same command: outputs would land among the inputs (a
    converter's shards among the class folders it reads, a cache listed as a class folder).

    Raises:
        ValueError: one line naming ``what`` (the output's flag), both paths and the relation.
    """
    o = Path(out).resolve()
    for flag, src in sources:
        s = Path(src).resolve()
        relation = "is" if o == s else "is inside" if s in o.parents else "contains" if o in s.parents else None
        if relation:
            raise ValueError(f"{what} {out} {relation} {flag} {src}: the output would land among the inputs of the "
                             f"same command; choose an output outside {src} (nothing was written)")


def allocate_npy(path: str | Path, dtype, shape: tuple[int, ...]) -> None:
    """Create the ``.npy`` file ``path`` of ``shape``/``dtype`` (zeros) with every block allocated,
    so that a full disk fails here, as one line, and not later as SIGBUS in a memory-mapped write.

    Raises:
        WriteError: no room (:func:`room_message`, with the size needed); ``path`` is removed.
    """
    import numpy as np

    path = Path(path)
    try:
        np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape).flush()
        _reserve(path)
    except OSError as e:
        if not is_out_of_room(e):
            raise
        message = room_message(path, e, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        path.unlink(missing_ok=True)
        raise WriteError(message) from None


def _reserve(path: Path) -> None:
    """Allocate every block of ``path`` (``posix_fallocate``), where the system and file system can;
    where they cannot, a full disk shows at the write instead."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, path.stat().st_size)
        except OSError as e:
            if e.errno in ROOM_ERRNOS:
                raise


@contextmanager
def output_lock(folder: str | Path) -> Iterator[None]:
    """Hold ``folder/.fastfc.lock`` (naming its holder, ``pid@host``) while writing ``folder``, so that
    a second process writing the same outputs at once is refused instead of mixing its files with
    the first's. A lock whose holder on this host is gone (killed) is taken over.

    Raises:
        FileExistsError: another live process holds it; the message names the holder and the lock.
    """
    lock = Path(folder) / ".fastfc.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = lock.read_text() if lock.is_file() else ""
            pid, _, host = holder.partition("@")
            if not (host == socket.gethostname() and pid.isdigit() and not Path(f"/proc/{pid}").exists()):
                raise FileExistsError(f"{folder}: another process ({holder or 'starting'}) is writing it, as {lock} "
                                      "says; wait for it to finish, or remove the lock if that process is gone") from None
            lock.unlink(missing_ok=True)  # left by a killed run
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}@{socket.gethostname()}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: str | Path, fix: str, keys: tuple[str, ...] = ()) -> dict:
    """Load the JSON object in ``path`` (UTF-8), with ``keys`` required at its top level.

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable, not a JSON object, or a key missing.
        Each message names the file and ends with ``fix`` (what to do).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; {fix}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable ({e}); {fix}") from None
    missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
    if not isinstance(obj, dict) or missing:
        raise ValueError(f"{path}: not the expected file (no {', '.join(missing or keys) or 'JSON object'}); {fix}")
    return obj


def exit_cleanly_on_sigterm(grace_s: float = 20.0) -> None:
    """Make SIGTERM (``kill``, preemption) unwind the main process like Ctrl-C, so ``finally``
    blocks remove temporary files. Forked children (pool and writer workers) inherit the handler
    and exit at once instead: raising inside a child blocked on a queue lock can deadlock it.

    A SIGTERM always ends the command: if the unwinding or the interpreter's exit hangs (the
    exception landed inside a library's set-up, e.g. a multiprocessing queue starting the feeder
    thread that exit then joins forever), the process ends anyway ``grace_s`` seconds after the
    signal, with status 128 + 15; a second SIGTERM ends it at once.
    """
    main_pid = os.getpid()

    def handler(signum, frame):
        global _terminating
        if os.getpid() != main_pid or _terminating:
            os._exit(128 + signum)
        _terminating = True  # checked again before any rename, in case the exception is swallowed
        watchdog = threading.Timer(grace_s, os._exit, (128 + signum,))
        watchdog.daemon = True  # exit does not wait for it; it outlives a hung exit
        watchdog.start()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
