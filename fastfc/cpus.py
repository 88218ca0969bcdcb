"""Worker counts that fit the CPUs this process may use.

Every loader and converter takes its default number of workers from here, and checks an explicit
number here. The count is the CPUs the process may run on (``os.sched_getaffinity``: what
``taskset``, cgroups' cpusets and SLURM's ``--cpus-per-task`` leave it), not the machine's core
count: ffcv sets numba's thread count to its ``num_workers``, and numba refuses more threads than
usable CPUs ("The number of threads must be between 1 and N").
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

#: Loader workers per process are capped here by default: more rarely feeds one GPU faster.
LOADER_CAP = 8

_warned: set[tuple[str, int]] = set()


def usable_cpus() -> int:
    """CPUs this process may run on (``len(os.sched_getaffinity(0))``; ``os.cpu_count()`` where
    the platform has no affinity call), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_workers(cap: int | None = LOADER_CAP) -> int:
    """The default worker count of one process: the usable CPUs shared among the processes that
    torchrun started on this node (``LOCAL_WORLD_SIZE``), at most ``cap`` (``None``: no cap), at least 1."""
    local_ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
    n = max(1, usable_cpus() // local_ranks)
    return n if cap is None else min(cap, n)


def fit_workers(requested: int | None, flag: str = "--workers", *, cap: int | None = LOADER_CAP) -> int:
    """``requested`` workers made to fit this process.

    ``None`` gives :func:`default_workers` (``cap``); 0 stays 0 (callers where 0 means "in this
    process"); a number above :func:`usable_cpus` is lowered to it, with one warning line on
    stderr naming ``flag`` (once per flag and value in a process).

    Raises:
        ValueError: ``requested`` is negative.
    """
    if requested is None:
        return default_workers(cap)
    if requested < 0:
        raise ValueError(f"{flag} {requested}: must be >= 0")
    usable = usable_cpus()
    if requested <= usable:
        return requested
    if (flag, requested) not in _warned:
        _warned.add((flag, requested))
        print(f"fastfc: warning: {flag} {requested} is more than the {usable} CPU(s) this process may use "
              f"(os.sched_getaffinity); using {usable}", file=sys.stderr)
    return usable


def avoid_tbb_on_one_cpu() -> None:
    """On a process that may use one CPU only, make numba use its own ``workqueue`` threading layer
    rather than TBB (unless ``NUMBA_THREADING_LAYER`` is set).

    ffcv starts numba's threading layer when it is imported (it sets the thread count). With TBB,
    numba's default where libtbb is installed, a one-CPU process that then forks (a DataLoader or
    beton-writer worker) hangs at exit in TBB's finalisation, after its work is done (seen under
    ``taskset -c 0``; numba issue 10556 reports the same deadlock under cgroup CPU limits). On one CPU
    ffcv compiles serial code, so no parallel kernel runs and the layer costs nothing.
    """
    if usable_cpus() > 1 or os.environ.get("NUMBA_THREADING_LAYER"):
        return
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    numba = sys.modules.get("numba")
    if numba is not None:  # imported already: its config was read, but the layer starts on first use
        numba.config.THREADING_LAYER = "workqueue"


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block, then restore the count. Small CPU kernels
    (a probe head's ``[256, D] x [D, C]`` step, the toy's ``[1000, 256] x [256, 256]``) gain nothing
    from more threads and lose badly on a busy machine: 100 probe steps of MobileNetV2 features
    (``[32, 1280] x [1280, 10]``) took 3.0 s on two threads and 0.3 s on one, on 2 shared cores.
    A fixed count also keeps CPU results bit-identical between runs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
