"""The one training loop of fastfc, shared by distillation (and later probing).

Launch (nanoGPT style, the process group comes from the torchrun environment)::

    python -m fastfc distill --config launch/configs/rn50.toml                 # one process
    torchrun --standalone --nproc-per-node 8 -m fastfc distill --config ...    # one node
    torchrun --nnodes 4 --node-rank $R --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --nproc-per-node 8 -m fastfc distill --config ...                       # several nodes

What the loop does, top to bottom: set up the device and DDP (nccl on GPU, gloo on CPU) →
optionally resume → per step: fetch a batch (timed: data wait), bf16 autocast forward of the
task's loss, backward, clip the gradient norm at 1.0, AdamW step with the per-step lr → log
(JSONL on rank 0, TensorBoard if installed, tqdm on rank 0) → atomic checkpoints every N steps,
at each epoch end, and on SIGTERM (then exit 0).

The objective lives in a *task* (:mod:`fastfc.distill`, :mod:`fastfc.probe`): an object with
``.model`` (the trainable module), ``.loss(images, labels) -> scalar`` and ``.flops_per_image``
(forward+backward FLOPs, or None). A task may also have ``.end_epoch(epoch) -> dict[str, float]``:
called on every rank after each full epoch, its values are logged (e.g. ``eval/clean/top1``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from fastfc.atomic import atomic_path

# Dense bf16 peak FLOP/s per device (vendor datasheets), for MFU. Unknown devices report no MFU.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


# ----------------------------------------------------------------------------- config

@dataclass
class TrainConfig:
    """How to train. Units: lr per step; batch sizes in images; steps are optimiser steps.

    ``optimizer``: "adamw" (``betas``, decoupled weight decay) or "sgd" (``momentum``, L2 weight
    decay). ``schedule``: "cosine" (:func:`lr_at`) or "step" (lr × ``lr_gamma`` every
    ``lr_step_epochs`` epochs); both warm up over ``warmup_steps``.

    ``global_batch_size`` is kept whatever the number of ranks (the paper's 256); the per-rank batch
    is derived and an uneven split is refused. ``compile=None`` means on for GPU, off for CPU.
    ``stop_after`` ends the run early at that step, as a preemption would (checkpoint saved),
    without changing the schedule; ``max_steps`` shortens the schedule itself.
    """

    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 10_000
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    optimizer: str = "adamw"
    momentum: float = 0.9
    schedule: str = "cosine"
    lr_step_epochs: int = 50
    lr_gamma: float = 0.1
    global_batch_size: int = 256
    max_steps: int | None = None
    stop_after: int | None = None
    seed: int = 0
    compile: bool | None = None
    bf16: bool = True
    channels_last: bool = True
    deterministic: bool = False
    out_dir: str = "runs/train"
    checkpoint_every: int = 1000
    keep_weights_every_epochs: int = 10
    log_every: int = 10

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.optimizer not in ("adamw", "sgd") or self.schedule not in ("cosine", "step"):
            raise ValueError(f"train.optimizer must be adamw or sgd (got {self.optimizer!r}) and train.schedule "
                             f"cosine or step (got {self.schedule!r})")
        if not (0 <= self.momentum < 1 and 0 < self.lr_gamma <= 1):
            raise ValueError(f"train.momentum must be in [0, 1) and train.lr_gamma in (0, 1], "
                             f"got {self.momentum} and {self.lr_gamma}")
        for name in ("epochs", "global_batch_size", "checkpoint_every", "log_every", "lr_step_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ValueError("train.warmup_steps must be >= 0 and train.lr > 0")
        for name in ("max_steps", "stop_after"):  # 0 would read as "not set" and run the whole schedule
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1 (or unset), got {getattr(self, name)}")

    def per_rank_batch(self, world_size: int) -> int:
        """The per-rank batch. Raises ``ValueError`` when the global batch does not split evenly."""
        if self.global_batch_size % world_size:
            raise ValueError(f"train.global_batch_size={self.global_batch_size} does not split evenly over "
                             f"{world_size} ranks; choose a multiple of {world_size} (e.g. "
                             f"{world_size * max(1, round(self.global_batch_size / world_size))})")
        return self.global_batch_size // world_size


def lr_at(step: int, *, base: float, warmup: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based).

    Linear warmup ``base * (step + 1) / warmup`` for ``step < warmup`` (so the first update is not a
    no-op), then cosine from ``base`` to 0 over the remaining ``total - warmup`` steps: the original
    code's rule (open_clip's ``cosine_lr``; REFERENCE.md §1, §4).
    """
    if step < warmup:
        return base * (step + 1) / warmup
    done, span = step - warmup, max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(done, span) / span)) * base


def scheduled_lr(cfg: TrainConfig, step: int, *, total: int, steps_per_epoch: int) -> float:
    """The lr of optimiser step ``step`` (0-based) under ``cfg.schedule``.

    "cosine": :func:`lr_at`. "step": the same linear warmup, then ``cfg.lr * cfg.lr_gamma ** k`` with
    ``k = (step // steps_per_epoch) // cfg.lr_step_epochs`` (PyTorch's ``StepLR`` stepped once per epoch).
    """
    if cfg.schedule == "cosine" or step < cfg.warmup_steps:
        return lr_at(step, base=cfg.lr, warmup=cfg.warmup_steps, total=total)
    return cfg.lr * cfg.lr_gamma ** (step // steps_per_epoch // cfg.lr_step_epochs)


def build_optimizer(cfg: TrainConfig, params, *, fused: bool) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params``: AdamW or SGD with momentum; fused when ``fused``, else multi-tensor."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused or None, foreach=None if fused else True)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay,
                             fused=fused or None, foreach=None if fused else True)


# ----------------------------------------------------------------------------- runtime

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
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, local, device)


class Task(Protocol):
    model: nn.Module
    flops_per_image: float | None

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model: nn.Module, optimizer, step: int, epoch: int, config: dict) -> None:
    """Atomically write ``{model, optimizer, step, epoch, rng, config}`` (model keys carry no prefixes)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "epoch": epoch, "rng": rng_state(), "config": config}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`. Raises ``FileNotFoundError`` naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint to resume from (drop --resume to start afresh)")
    return torch.load(path, map_location="cpu", weights_only=False)  # our own file: holds RNG objects


# ----------------------------------------------------------------------------- metrics

class Metrics:
    """JSONL (and TensorBoard when installed) on rank 0; keys are namespaced (``train/loss``)."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled, self.tb = enabled, None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.file = (out_dir / "metrics.jsonl").open("a")
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / "tb"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


# ----------------------------------------------------------------------------- the loop

class _Preemption:
    """SIGTERM sets a flag; the loop checkpoints at the next step boundary and exits cleanly."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, *_):
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._previous)


def _all_agree(flag: bool, rt: Runtime) -> bool:
    if not rt.distributed:
        return flag
    t = torch.tensor([int(flag)], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def replica_checksum(model: nn.Module) -> float:
    """A float64 sum over all parameters: equal on every rank when DDP kept the replicas in sync."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def prepare(task: Task, cfg: TrainConfig, rt: Runtime, *, fused: bool | None = None):
    """Place ``task.model`` for training and build its optimiser.

    Moves it to the device (channels_last if set), wraps it in DDP when distributed, then
    ``torch.compile`` (``cfg.compile``, default on for GPU). ``task.model`` becomes the wrapped
    module; the raw module is returned for checkpoints (no ``module.``/``_orig_mod.`` prefixes).
    The optimiser (:func:`build_optimizer`) is fused on CUDA (``fused=None``), multi-tensor elsewhere.

    Returns:
        ``(raw_model, optimizer)``.
    """
    model = task.model.to(rt.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    raw_model = model
    if rt.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    if cfg.compile if cfg.compile is not None else rt.device.type == "cuda":
        model = torch.compile(model)
    task.model = model
    fused = rt.device.type == "cuda" if fused is None else fused
    return raw_model, build_optimizer(cfg, raw_model.parameters(), fused=fused)


def train_step(task: Task, raw_model: nn.Module, optimizer, images: torch.Tensor, *, lr: float,
               cfg: TrainConfig, labels: torch.Tensor | None = None) -> torch.Tensor:
    """One optimiser step on ``images`` (``[B,3,H,W]`` on the device, ``labels`` ``[B]``): the hot path.

    bf16 autocast around the forward only (the backward follows the forward's dtypes), gradients
    set to None rather than zeroed (no memset), the gradient norm clipped at ``cfg.grad_clip``
    over the raw parameters (DDP has already averaged them). Returns the loss (a 0-d tensor; not
    synchronised, so the GPU is never waited on here).
    """
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if not cfg.bf16:
        images = images.float()
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        loss = task.loss(images, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach()


def train(task: Task, loader: Any, cfg: TrainConfig, rt: Runtime, *, resume: bool = False,
          run_config: dict | None = None) -> dict:
    """Train ``task.model`` on ``loader`` (yielding ``(images [B,3,H,W], labels)`` per rank).

    ``loader`` must be an ffcv ``Loader`` (or anything with ``len()``, iteration and a writable
    ``next_epoch``, which seeds its order). Resuming restores model, optimiser, step, epoch and RNG
    state, then skips the batches of the current epoch already seen, so the lr at every later step
    equals the uninterrupted run's; with deterministic data and algorithms so do the losses.

    Returns:
        A summary: ``{"step", "epoch", "stopped_early", "replica_checksums", "final_loss"}``; also
        written to ``out_dir/summary.json`` on rank 0.
    """
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed + rt.rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    original_model = task.model
    raw_model, optimizer = prepare(task, cfg, rt)

    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise ValueError("the loader yields no full batch: the dataset is smaller than the per-rank batch")
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    step = 0
    if resume:
        ckpt = load_checkpoint(out / "checkpoint.pt")
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        set_rng_state(ckpt["rng"])
    config = run_config or {"train": asdict(cfg)}
    if rt.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    metrics = Metrics(out, rt.is_main)
    peak = peak_flops(rt.device)
    preempt = _Preemption()
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not rt.is_main, dynamic_ncols=True)
    stopped_early, last_loss = False, float("nan")
    lr = scheduled_lr(cfg, step, total=total, steps_per_epoch=steps_per_epoch)
    window = {"images": 0, "wait": 0.0, "start": time.perf_counter(), "loss": 0.0, "n": 0}
    try:
        while step < total and not stopped_early:
            epoch, skip = divmod(step, steps_per_epoch)
            loader.next_epoch = epoch
            batches = iter(loader)
            for _ in range(skip):  # resume mid-epoch: same order, skip what was seen
                next(batches)
            for i in range(skip, steps_per_epoch):
                t0 = time.perf_counter()
                images, labels = next(batches)[:2]
                window["wait"] += time.perf_counter() - t0
                lr = scheduled_lr(cfg, step, total=total, steps_per_epoch=steps_per_epoch)
                loss = train_step(task, raw_model, optimizer, images.to(rt.device, non_blocking=True), lr=lr,
                                  cfg=cfg, labels=labels.to(rt.device, non_blocking=True))
                step += 1
                window["images"] += images.shape[0] * rt.world_size
                window["loss"] += loss.float()
                window["n"] += 1
                bar.update()
                if step % cfg.log_every == 0 or step == total:
                    last_loss = _log(metrics, bar, window, step, lr, rt, peak, task.flops_per_image)
                if step % cfg.checkpoint_every == 0 and rt.is_main:
                    save_checkpoint(out / "checkpoint.pt", model=raw_model, optimizer=optimizer,
                                    step=step, epoch=epoch, config=config)
                stop = preempt.requested or (cfg.stop_after is not None and step >= cfg.stop_after)
                if _all_agree(stop, rt) or step >= total:
                    stopped_early = step < total
                    break
            getattr(batches, "close", lambda: None)()  # stop ffcv's prefetch threads of a cut epoch
            if rt.is_main:  # end of epoch (or stop): always leave a resumable checkpoint
                save_checkpoint(out / "checkpoint.pt", model=raw_model, optimizer=optimizer,
                                step=step, epoch=step // steps_per_epoch, config=config)
                done_epochs = step // steps_per_epoch
                if step % steps_per_epoch == 0 and done_epochs % cfg.keep_weights_every_epochs == 0:
                    with atomic_path(out / f"weights_epoch{done_epochs:03d}.pt") as tmp:
                        torch.save(raw_model.state_dict(), tmp)
            if step % steps_per_epoch == 0 and hasattr(task, "end_epoch"):
                metrics.log(step, task.end_epoch(step // steps_per_epoch - 1))
        if window["n"]:
            last_loss = _log(metrics, bar, window, step, lr, rt, peak, task.flops_per_image)
        sums = [replica_checksum(raw_model)]
        if rt.distributed:
            gathered = [None] * rt.world_size
            dist.all_gather_object(gathered, sums[0])
            sums = gathered
        if rt.is_main and not stopped_early:
            with atomic_path(out / "weights.pt") as tmp:
                torch.save(raw_model.state_dict(), tmp)
        summary = {"step": step, "epoch": step / steps_per_epoch, "total_steps": total,
                   "stopped_early": stopped_early, "replica_checksums": sums, "final_loss": last_loss}
        if rt.is_main:
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary
    finally:
        bar.close()
        metrics.close()
        preempt.restore()
        task.model = original_model


def _log(metrics: Metrics, bar, window: dict, step: int, lr: float, rt: Runtime, peak, flops) -> float:
    """Reduce the window's loss over ranks, log it with img/s, data wait, memory and MFU; reset."""
    loss = torch.as_tensor(window["loss"] / window["n"], device=rt.device, dtype=torch.float32)
    if rt.distributed:
        dist.all_reduce(loss)
        loss /= rt.world_size
    elapsed = time.perf_counter() - window["start"]
    values = {"train/loss": float(loss), "train/lr": lr, "perf/img_per_s": window["images"] / elapsed,
              "perf/data_wait": window["wait"] / elapsed}
    if rt.device.type == "cuda":
        values["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated(rt.device) / 1e9
    if peak and flops:
        values["perf/mfu"] = values["perf/img_per_s"] / rt.world_size * flops / peak
    metrics.log(step, values)
    bar.set_postfix(loss=f"{values['train/loss']:.4g}", lr=f"{lr:.2e}", img_s=f"{values['perf/img_per_s']:.0f}")
    window.update(images=0, wait=0.0, start=time.perf_counter(), loss=0.0, n=0)
    return values["train/loss"]
