"""Where and how a model runs: the process placement from the torchrun environment, and one
function that readies a model for fast training or inference (device, channels_last, DDP,
``torch.compile``, autocast precision). Training (:mod:`fastfc.train`) and feature extraction
(:mod:`fastfc.features`) both go through :func:`prepare_model`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from fastfc.atomic import output_lock
from fastfc.train_config import check_precision  # re-exported

# Dense bf16 peak FLOP/s per device (vendor datasheets), for MFU. Unknown devices report no MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


@dataclass
class Runtime:
    """Process placement, read from the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime() -> Runtime:
    """Initialise the process group when launched by torchrun (nccl on GPU, gloo on CPU).

    A plain ``python -m fastfc ...`` (no ``WORLD_SIZE``) runs as one process without a group.
    After a ``torchrun --max-restarts`` restart (``TORCHELASTIC_RESTART_COUNT`` > 0) the group's keys
    live under a prefix of that count: torchrun's store keeps the dead attempt's addresses, and a
    restarted worker that read them failed to connect (gloo "Connection refused").
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
        if restart > 0:
            store, _, _ = next(dist.rendezvous("env://", rank, world))
            dist.init_process_group(backend, store=dist.PrefixStore(f"fastfc/restart{restart}", store),
                                    rank=rank, world_size=world)
        else:
            dist.init_process_group(backend)
    return Runtime(rank, world, local, device)


@contextlib.contextmanager
def output_lock_all_ranks(folder: str | Path, rt: Runtime) -> Iterator[None]:
    """:func:`fastfc.atomic.output_lock` on ``folder``, held by the main rank for every rank of a
    collective command: a refusal (another process is writing ``folder``) is raised on every rank,
    instead of on the main rank only while the others wait for it in the next collective (until the
    group's timeout when no launcher tears them down, e.g. on other nodes).

    Raises:
        FileExistsError: on every rank, with the main rank's one line naming the folder and holder.
    """
    with contextlib.ExitStack() as held:
        refusal = [None]
        if rt.is_main:
            try:
                held.enter_context(output_lock(folder))
            except FileExistsError as e:
                refusal = [str(e)]
        if rt.distributed:
            dist.broadcast_object_list(refusal, src=0)
        if refusal[0] is not None:
            raise FileExistsError(refusal[0])
        yield


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of ``device`` (:data:`PEAK_BF16_FLOPS`), None on CPU or unknown GPUs."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


@dataclass
class Prepared:
    """A model placed for fast execution by :func:`prepare_model`.

    ``module`` is what to call (maybe DDP- and/or compile-wrapped); ``raw`` is the plain module
    (its ``state_dict`` has no ``module.``/``_orig_mod.`` prefixes; the optimiser holds its
    parameters).
    """

    module: nn.Module
    raw: nn.Module
    device: torch.device
    precision: str
    channels_last: bool

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B,3,H,W]`` on the device, in the memory format and dtype the model expects
        (float32 under ``"fp32"``; under ``"bf16"`` autocast casts them)."""
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images.float() if self.precision == "fp32" else images

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast under ``"bf16"``; a no-op under ``"fp32"``. Anything else run inside it
        (a teacher, a loss) runs at the same precision."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


def prepare_model(model: nn.Module, rt: Runtime, *, training: bool, precision: str = "bf16",
                  channels_last: bool = True, compile: bool | None = None) -> Prepared:
    """Move ``model`` to ``rt.device`` and ready it for training (``training=True``: DDP when ``rt``
    is distributed; the module's train/eval modes are left as they are) or inference (eval mode, no DDP).

    Args:
        precision: ``"bf16"`` or ``"fp32"`` (:data:`PRECISIONS`); use :meth:`Prepared.autocast`.
        channels_last: NHWC memory format (faster convolutions on tensor cores).
        compile: ``torch.compile`` the (DDP-wrapped) module; None means on for GPU, off for CPU.

    Raises:
        ValueError: unknown ``precision``.
    """
    check_precision(precision)
    raw = model.to(rt.device)
    if not training:  # training keeps the module's own modes (e.g. BatchNorm frozen by oracle_norm_stats)
        raw.eval()
    if channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    module = raw
    if training and rt.distributed:
        module = nn.parallel.DistributedDataParallel(
            raw, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    if compile if compile is not None else rt.device.type == "cuda":
        module = torch.compile(module)
    return Prepared(module, raw, rt.device, precision, channels_last)
