"""The converters' parallel check: every listed file is decoded once before anything is written.

What counts as a bad file, and why, is :mod:`fastfc.data.images`'s policy; this module runs that
check over many files in forked processes with a progress bar, and either stops on the first bad
file or, with ``--skip-bad``, names each one for ``meta.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from fastfc.data.images import skip


class ConversionError(RuntimeError):
    """A conversion that cannot finish; the message names the offending file and what to do."""


def imap_progress(fn, items: list, *, workers: int, desc: str):
    """``fn`` over ``items`` in ``workers`` forked processes, in order, with an img/s progress bar.

    A generator: a caller that stops early (first bad file) terminates the pool; one that reads
    to the end closes and joins it.
    """
    import multiprocessing as mp

    from tqdm import tqdm

    with mp.get_context("fork").Pool(workers) as pool, \
            tqdm(total=len(items), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for result in pool.imap(fn, items, chunksize=32):
            bar.update()
            yield result
        pool.close()
        pool.join()


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
    for f, (result, reason) in zip(files, imap_progress(probe, paths, workers=workers, desc=desc)):
        if reason is not None:
            if not skip_bad:
                raise ConversionError(f"{src / f}: {reason}")
            skipped.append(skip(f, reason))
        results.append(None if reason is not None else result)
    return results, skipped
