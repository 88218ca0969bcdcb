"""Atomic file writes: write to a temporary name in the same folder, then ``os.replace``.

A reader never sees a half-written file under its final name, and an interrupted writer
(exception, SIGTERM, Ctrl-C) leaves nothing under the final name and cleans its temporary.
"""

from __future__ import annotations

import json
import signal
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

_terminating = False  # set by the SIGTERM handler of exit_cleanly_on_sigterm()


def tmp_name(final: str | Path) -> Path:
    """The temporary name used for ``final``: hidden, in the same folder, unique per process."""
    final = Path(final)
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``final``, on any exception delete it.

    The caller writes the whole file to the yielded path. Raises whatever the body raises.
    """
    final = Path(final)
    tmp = tmp_name(final)
    try:
        yield tmp
        publish(tmp, final)
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


def exit_cleanly_on_sigterm() -> None:
    """Make SIGTERM (``kill``, preemption) unwind the main process like Ctrl-C, so ``finally``
    blocks remove temporary files. Forked children (pool and writer workers) inherit the handler
    and exit at once instead: raising inside a child blocked on a queue lock can deadlock it."""
    main_pid = os.getpid()

    def handler(signum, frame):
        global _terminating
        if os.getpid() != main_pid:
            os._exit(128 + signum)
        _terminating = True  # checked again before any rename, in case the exception is swallowed
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
