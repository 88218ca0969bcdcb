"""Writing FFCV ``.beton`` files that never hang, never half-exist, and show img/s.

ffcv 1.0.2's ``DatasetWriter`` polls a shared counter until every sample is written: a worker
that raises (one corrupt JPEG) leaves it spinning forever, and a killed run leaves a
half-written file under the final name. :class:`BetonWriter` keeps ffcv's on-disk format and
worker code, and replaces only the supervision loop: it watches the workers, stops all of them
on the first error, reports which file caused it, and the caller writes to a temporary name
(:func:`fastfc.atomic.atomic_path`).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import queue
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter, worker_job_indexed_dataset
from tqdm import tqdm

from fastfc.atomic import is_out_of_room, room_message
from fastfc.data.images import BadImageError, load_rgb

from .scan import ConversionError
from .settings import WRITE_MODES, WriterSettings, short_side_for

__all__ = ["BetonWriter", "ConversionError", "ImageFiles", "WRITE_MODES", "WriterSettings", "short_side_for"]


class ImageFiles:
    """Indexable ``(image HxWx3 uint8, label int)`` over image files, as ffcv's writer wants.

    A decode error is put on ``errors`` (shared with the parent) before it propagates, so the
    supervising :class:`BetonWriter` can name the file.

    In ``proportion`` mode ffcv draws ``np.random.rand()`` to decide JPEG or raw for each image,
    in whichever writer process gets it. Reading image ``i`` reseeds that process's global numpy
    generator with ``i`` (ffcv encodes the sample right after), so the same image is stored the same
    way on every conversion, whatever the number of workers. (The file's byte layout still follows
    the workers' timing.)
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], settings: WriterSettings):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.max_resolution, self.short_side = settings.max_resolution, settings.short_side
        self.exif_upright = settings.exif_upright
        self.errors: mp.Queue = mp.get_context("fork").Queue()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        np.random.seed(i % 2**32)  # ffcv's proportion-mode draw for this image (see the class doc)
        try:
            return load_rgb(self.paths[i], self.max_resolution, self.short_side, exif_upright=self.exif_upright), int(self.labels[i])
        except BadImageError as e:
            self.errors.put(str(e))
            raise
        except Exception as e:  # anything else must still name the file
            self.errors.put(f"{self.paths[i]}: {type(e).__name__}: {e}")
            raise


def _writer_job(*args) -> None:
    """ffcv's writer process (``worker_job_indexed_dataset``), whose running out of room (disk full,
    file-size limit) is put on the dataset's error queue as one line naming the beton, instead of a
    traceback and "a writer process died"."""
    allocator, dataset = args[4], args[-1]
    try:
        worker_job_indexed_dataset(*args)
    except OSError as e:
        if not is_out_of_room(e):
            raise
        dataset.errors.put(room_message(allocator.fname, e))
        raise SystemExit(1) from None  # quietly: the message is the supervisor's to show


class BetonWriter(DatasetWriter):
    """ffcv ``DatasetWriter`` whose supervisor stops on the first worker error instead of hanging.

    Args:
        fname: output path (pass a temporary name and rename after success).
        settings: :class:`WriterSettings`.
        num_workers: writer processes (fork).
        max_pixels: pixels of the largest input, to size pages when ``max_resolution`` is 0.
        desc: progress-bar label.
    """

    def __init__(self, fname: str | Path, settings: WriterSettings, num_workers: int,
                 max_pixels: int = 0, desc: str = "write"):
        super().__init__(str(fname), settings.fields(), page_size=settings.page_size(max_pixels),
                         num_workers=num_workers)
        self.desc = desc

    def write(self, dataset: ImageFiles, chunksize: int = 64) -> None:
        """Write every sample of ``dataset`` in index order. Raises :class:`ConversionError`."""
        self._errors = dataset.errors
        indices = list(enumerate(range(len(dataset))))
        chunks = [indices[i:i + chunksize] for i in range(0, len(indices), chunksize)]
        self._write_common(len(indices), chunks, _writer_job, (dataset,))

    # Same protocol as ffcv 1.0.2's ``_write_common``; only the supervision differs.
    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        """ffcv's protocol, with a clean-up that covers every step: a SIGTERM landing while the work
        queue started its feeder thread left that thread to be joined at exit, where it waited
        forever (seen in CI), and leaked the metadata's shared memory."""
        self.num_samples, self.metadata_sm = num_samples, None
        ctx = mp.get_context("fork")
        procs, queues = [], []
        try:
            self.prepare()  # the header, and the metadata in shared memory
            workqueue, allocations_queue = ctx.Queue(), ctx.Queue()
            queues += [workqueue, allocations_queue]
            for todo in [*queue_content, *[None] * self.num_workers]:
                workqueue.put(todo)
            done = ctx.Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            args = (workqueue, self.metadata_sm, self.metadata_type, self.fields, allocator, done,
                    allocations_queue, *extra_worker_args)
            procs += [ctx.Process(target=work_fn, args=args, daemon=True) for _ in range(self.num_workers)]
            for p in procs:
                p.start()
            self._supervise(procs, done, allocations_queue)
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()  # SIGKILL: a SIGTERM to a worker still starting up can be lost (see scan.py)
                    p.join()
            for q in queues:
                q.cancel_join_thread()  # an interrupted run's feeder may hold items no process will read
            if hasattr(self.metadata_sm, "unlink"):  # ffcv's prepare sets a placeholder (3) first
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    def _supervise(self, procs, done, allocations_queue) -> None:
        """Count the workers' progress on a bar until every sample is written, then finalize."""
        with tqdm(total=self.num_samples, desc=self.desc, unit="img", dynamic_ncols=True) as bar:
            written = 0  # not bar.n: a disabled bar (TQDM_DISABLE=1) never counts, and this waited forever
            while written < self.num_samples:
                self._raise_on_failure(procs)
                if done.value > written:
                    bar.update(done.value - written)
                    written = done.value
                time.sleep(0.05)
        allocations = []
        for _ in procs:
            allocations.extend(self._get_allocations(allocations_queue, procs))
        for p in procs:
            p.join()
        self.finalize(allocations)

    def _raise_on_failure(self, procs) -> None:
        try:
            message = self._errors.get_nowait()
        except queue.Empty:
            message = None
        if message is None and any(p.exitcode not in (None, 0) for p in procs):
            time.sleep(0.2)  # the dying worker's message may still be in flight
            try:
                message = self._errors.get_nowait()
            except queue.Empty:
                message = "a writer process died (out of memory?) without naming a file"
        if message is not None:
            raise ConversionError(message)

    def _get_allocations(self, allocations_queue, procs) -> list:
        while True:
            try:
                return allocations_queue.get(timeout=0.5)
            except queue.Empty:
                self._raise_on_failure(procs)
