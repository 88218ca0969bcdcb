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
import math
import multiprocessing as mp
import queue
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ffcv.fields import IntField, RGBImageField
from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import MIN_PAGE_SIZE, DatasetWriter, worker_job_indexed_dataset
from tqdm import tqdm

from .images import BadImageError, load_rgb

WRITE_MODES = ("proportion", "jpg", "raw")


def short_side_for(resolution: int, min_scale: float = 0.9) -> int:
    """Smallest stored shorter side (px) from which a RandomResizedCrop keeping at least
    ``min_scale`` of the area reaches ``resolution`` px without upsampling: ``ceil(r / s)``
    (224 px, the paper's 0.9: 249). See :attr:`WriterSettings.short_side`."""
    return math.ceil(resolution / min_scale)


@dataclass(frozen=True)
class WriterSettings:
    """How images are stored. Defaults are ffcv-imagenet's ImageNet recipe (REFERENCE.md §3).

    Attributes:
        max_resolution: longer side in px after resize; 0 keeps full size.
        write_mode: ``proportion`` (a random ``compress_probability`` share as JPEG, the rest raw),
            ``jpg`` or ``raw``.
        compress_probability: share of JPEG-stored images in ``proportion`` mode, in [0, 1].
        jpeg_quality: libjpeg quality 1..100 of the stored JPEGs.
        short_side: shorter side in px after resize; 0 = no bound. Decode time scales with the
            stored pixels, so store at the smallest size that still feeds the training crop
            without upsampling, :func:`short_side_for` (224 px: 249, so 256; 288 px: 320;
            384 px: 427). REFERENCE.md §5; ``benchmarks/loader.py`` measures the gain.
    """

    max_resolution: int = 500
    write_mode: str = "proportion"
    compress_probability: float = 0.5
    jpeg_quality: int = 90
    short_side: int = 0

    def __post_init__(self):
        if self.write_mode not in WRITE_MODES:
            raise ValueError(f"write_mode (--write-mode) must be one of {WRITE_MODES}, got {self.write_mode!r}")
        if not 0.0 <= self.compress_probability <= 1.0:
            raise ValueError(f"compress_probability (--compress-probability) must be in [0, 1], got {self.compress_probability}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality (--jpeg-quality) must be in 1..100, got {self.jpeg_quality}")
        if self.max_resolution < 0:
            raise ValueError(f"max_resolution (--max-resolution) must be >= 0 (0 = keep full size), got {self.max_resolution}")
        if self.short_side < 0:
            raise ValueError(f"short_side (--short-side) must be >= 0 (0 = no bound), got {self.short_side}")

    def fields(self) -> dict:
        """The ffcv fields of a fastfc beton: ``image`` (RGBImageField) and ``label`` (IntField)."""
        return {
            "image": RGBImageField(write_mode=self.write_mode,
                                   max_resolution=self.max_resolution or None,
                                   compress_probability=self.compress_probability,
                                   jpeg_quality=self.jpeg_quality),
            "label": IntField(),
        }

    def page_size(self, max_pixels: int) -> int:
        """ffcv page size in bytes: a power of two that holds the largest raw sample (``max_pixels`` px)."""
        side = self.max_resolution
        need = 3 * (side * side if side else max_pixels)
        size = 4 * MIN_PAGE_SIZE  # ffcv's default, 8 MiB
        while size < 2 * need:
            size *= 2
        return size

    def as_dict(self) -> dict:
        return asdict(self)


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
        self.errors: mp.Queue = mp.get_context("fork").Queue()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        np.random.seed(i % 2**32)  # ffcv's proportion-mode draw for this image (see the class doc)
        try:
            return load_rgb(self.paths[i], self.max_resolution, self.short_side), int(self.labels[i])
        except BadImageError as e:
            self.errors.put(str(e))
            raise
        except Exception as e:  # anything else must still name the file
            self.errors.put(f"{self.paths[i]}: {type(e).__name__}: {e}")
            raise


class ConversionError(RuntimeError):
    """A conversion that cannot finish; the message names the offending file and what to do."""


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
        self._write_common(len(indices), chunks, worker_job_indexed_dataset, (dataset,))

    # Same protocol as ffcv 1.0.2's ``_write_common``; only the supervision differs.
    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        self.num_samples = num_samples
        self.prepare()
        ctx = mp.get_context("fork")
        workqueue, allocations_queue = ctx.Queue(), ctx.Queue()
        for todo in queue_content:
            workqueue.put(todo)
        for _ in range(self.num_workers):
            workqueue.put(None)
        done = ctx.Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
        args = (workqueue, self.metadata_sm, self.metadata_type, self.fields, allocator, done,
                allocations_queue, *extra_worker_args)
        procs = [ctx.Process(target=work_fn, args=args, daemon=True) for _ in range(self.num_workers)]
        allocations = []
        try:
            for p in procs:
                p.start()
            with tqdm(total=num_samples, desc=self.desc, unit="img", dynamic_ncols=True) as bar:
                while bar.n < num_samples:
                    self._raise_on_failure(procs)
                    if done.value > bar.n:
                        bar.update(done.value - bar.n)
                    time.sleep(0.05)
            for _ in procs:
                allocations.extend(self._get_allocations(allocations_queue, procs))
            for p in procs:
                p.join()
            self.finalize(allocations)
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

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
