"""The converters' parallel check: every listed file is decoded once before anything is written.

What counts as a bad file, and why, is :mod:`fastfc.data.images`'s policy; this module runs that
check over many files in forked processes with a progress bar, and either stops on the first bad
file or, with ``--skip-bad``, names each one for ``meta.json``.
"""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any, Callable

from fastfc.data.images import skip


class ConversionError(RuntimeError):
    """A conversion that cannot finish; the message names the offending file and what to do."""


def imap_progress(fn, items: list, *, workers: int, desc: str):
    """``fn`` over ``items`` in ``workers`` forked processes, in order, with an img/s progress bar.

    A generator. A caller that stops early (first bad file) cancels the chunks not yet started and
    waits for the running ones (one chunk each, about a second). No worker is ever stopped with a
    signal: ``multiprocessing.Pool.terminate`` sends SIGTERM, and a worker still starting up loses
    it (CPython clears signals that arrive before its after-fork set-up), after which the parent
    waits for it forever (seen in CI on a loaded machine, with a 2-file set and two workers).

    Raises:
        ConversionError: a worker process died (killed, out of memory) instead of answering.
    """
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from tqdm import tqdm

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))
    try:
        with tqdm(total=len(items), desc=desc, unit="img", dynamic_ncols=True) as bar:
            for result in pool.map(fn, items, chunksize=32):
                bar.update()
                yield result
    except BrokenProcessPool as e:
        raise ConversionError(f"a worker process died while checking files ({e}); out of memory? "
                              "Try fewer --workers") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_files(probe: Callable[[str], tuple[Any, str | None]], src: Path, files: list[str], *, workers: int,
                skip_bad: bool, desc: str) -> tuple[list, list[dict]]:
    """Run ``probe(path) -> (result, reason or None)`` over ``src / f`` for each of ``files``.

    Returns:
        ``(results, skipped)``: ``results[i]`` for every file (``None`` for a bad one) and the bad
        files as ``{"file": f, "reason": reason}`` entries, in ``files`` order.

    Raises:
        ConversionError: the first bad file (its path and reason), unless ``skip_bad``.
    """
    paths = [str(src / f) for f in files]
    results, skipped = [], []
    with closing(imap_progress(probe, paths, workers=workers, desc=desc)) as checked:
        for f, (result, reason) in zip(files, checked, strict=True):  # strict: the generator runs to its end
            if reason is not None:
                if not skip_bad:
                    raise ConversionError(f"{src / f}: {reason}")
                skipped.append(skip(f, reason))
            results.append(None if reason is not None else result)
    return results, skipped
