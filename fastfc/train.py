"""The one training loop of fastfc, shared by distillation and probing from images.

Launch (nanoGPT style, the process group comes from the torchrun environment)::

    python -m fastfc distill --config launch/configs/rn50.toml                 # one process
    torchrun --standalone --nproc-per-node 8 -m fastfc distill --config ...    # one node
    torchrun --nnodes 4 --node-rank $R --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        --nproc-per-node 8 -m fastfc distill --config ...                       # several nodes

What the loop does, top to bottom: place the model (:func:`fastfc.runtime.prepare_model`: device,
channels_last, DDP, compile) → optionally resume (:class:`fastfc.checkpoint.Checkpointer`) → per
step: fetch a batch (timed: data wait), forward of the task's loss under the run's precision (bf16
autocast, or fp32 throughout), backward, clip the gradient norm at 1.0, AdamW step with the per-step
lr → per log window (:class:`Meter`): loss, gradient norm, img/s, data wait, MFU; JSONL on rank 0,
TensorBoard if installed, tqdm on rank 0 → atomic, verified checkpoints every N steps, at each
epoch end, and on SIGTERM (then exit 0). A non-finite loss, gradient norm or weights stops the run
(:class:`fastfc.checkpoint.Diverged`) before anything non-finite is written.

The run is the same at any world size: steps per epoch come from the image count and the global
batch only (:meth:`TrainConfig.steps_per_epoch`), so the schedule and a resume do not depend on
the number of processes.

The objective lives in a *task* (:mod:`fastfc.distill`, :mod:`fastfc.probe`): an object with
``.model`` (the trainable module), ``.loss(images, labels) -> scalar`` and ``.flops_per_image``
(forward+backward FLOPs, or None). A task may also have ``.end_epoch(epoch) -> dict[str, float]``:
called on every rank after each full epoch, its values are logged (e.g. ``eval/clean/top1``).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from fastfc.atomic import atomic_path
from fastfc.checkpoint import Checkpointer
from fastfc.runtime import Prepared, Runtime, peak_flops, prepare_model
from fastfc.train_config import TrainConfig  # re-exported: the config lives apart, torch-free


# ----------------------------------------------------------------------------- schedule and optimiser

def lr_at(step: int, *, base: float, warmup: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based).

    Linear warmup ``base * (step + 1) / warmup`` for ``step < warmup`` (so the first update is not a
    no-op), then cosine from ``base`` to 0 over the remaining ``total - warmup`` steps: the original
    code's rule (open_clip's ``cosine_lr``; docs/recipe.md).
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


class Task(Protocol):
    model: nn.Module
    flops_per_image: float | None

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor: ...


# ----------------------------------------------------------------------------- metrics

class Metrics:
    """The run's record on rank 0: ``config.json`` (the resolved config), ``metrics.jsonl`` (and
    TensorBoard when installed; keys are namespaced, ``train/loss``), ``summary.json``. Every
    metrics line is strict JSON: a non-finite value is written as ``null``. A run starting at
    ``first_step`` (a resume, or 0) first drops the lines logged after it (:func:`trim_metrics`),
    so no step is ever logged twice."""

    def __init__(self, out_dir: Path, enabled: bool, config: dict, first_step: int = 0):
        self.out, self.enabled, self.tb = out_dir, enabled, None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
            dropped = trim_metrics(out_dir / "metrics.jsonl", first_step)
            if dropped:
                print(f"[metrics] {out_dir / 'metrics.jsonl'}: dropped {dropped} line(s) logged after step "
                      f"{first_step} (not in the checkpoint the run continues from)", flush=True)
            self.file = (out_dir / "metrics.jsonl").open("a")
            with contextlib.suppress(ImportError):
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(out_dir / "tb"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: v if math.isfinite(v) else None for k, v in values.items()}
        self.file.write(json.dumps({"step": step, **values}, allow_nan=False) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)

    def write_summary(self, summary: dict) -> None:
        if self.enabled:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()


def trim_metrics(path: Path, step: int) -> int:
    """Atomically keep only the lines of ``path`` (metrics.jsonl) logged at ``step`` or before (a
    line cut short by a crash goes too). Returns the number of lines dropped (0: file untouched)."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    keep = [line for line in lines if (at := _step_of_line(line)) is not None and at <= step]
    if len(keep) < len(lines):
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in keep))
    return len(lines) - len(keep)


def _step_of_line(line: str) -> int | None:
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        return int(json.loads(line)["step"])
    return None


class Meter:
    """One log window: each step's loss and gradient norm stay on the device (no host sync per
    step); images and data-wait time are counted on the host. :meth:`flush` reduces the window
    over ranks in one transfer and finds the first non-finite step.

    Values: ``train/loss`` (mean over the window and the ranks), ``train/grad_norm`` (mean,
    before clipping), ``perf/img_per_s`` (all ranks), ``perf/data_wait`` (share of wall time
    blocked on the loader), ``perf/peak_mem_gb`` (CUDA), ``perf/mfu`` (GPUs with a known peak).
    """

    def __init__(self, rt: Runtime, flops_per_image: float | None):
        self.rt, self.flops, self.peak = rt, flops_per_image, peak_flops(rt.device)
        self._reset()

    def _reset(self) -> None:
        self.losses, self.norms, self.images, self.wait, self.start = [], [], 0, 0.0, time.perf_counter()

    @property
    def pending(self) -> bool:
        return bool(self.losses)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time spent inside counts as data wait."""
        t0 = time.perf_counter()
        yield
        self.wait += time.perf_counter() - t0

    def record(self, loss: torch.Tensor, grad_norm: torch.Tensor, images: int) -> None:
        """Add one step: its loss and gradient norm (0-d device tensors) and this rank's batch size."""
        self.losses.append(loss)
        self.norms.append(grad_norm)
        self.images += images * self.rt.world_size

    def _window(self) -> torch.Tensor:
        """``[2, n]`` float64 on the host: each step's loss (mean over ranks) and gradient norm."""
        both = torch.stack([torch.stack(self.losses).float(), torch.stack(self.norms).float()])
        if self.rt.distributed:  # a non-finite value on any rank stays non-finite in the sum
            dist.all_reduce(both)
            both /= self.rt.world_size
        return both.double().cpu()

    def first_nonfinite(self, step: int) -> tuple[int, str] | None:
        """``(step, what)`` of the first step in the window (ending at ``step``) whose loss or
        gradient norm is not finite, or None. Collective; keeps the window."""
        if not self.pending:
            return None
        return _first_bad(self._window(), step)

    def flush(self, step: int) -> tuple[dict[str, float], tuple[int, str] | None]:
        """The window's values (see the class docstring) and its first non-finite step; resets."""
        both = self._window()
        elapsed = time.perf_counter() - self.start
        values = {"train/loss": float(both[0].mean()), "train/grad_norm": float(both[1].mean()),
                  "perf/img_per_s": self.images / elapsed, "perf/data_wait": self.wait / elapsed}
        if self.rt.device.type == "cuda":
            values["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated(self.rt.device) / 1e9
        if self.peak and self.flops:
            values["perf/mfu"] = values["perf/img_per_s"] / self.rt.world_size * self.flops / self.peak
        self._reset()
        return values, _first_bad(both, step)


def _first_bad(window: torch.Tensor, step: int) -> tuple[int, str] | None:
    bad = (~torch.isfinite(window)).any(0).nonzero()
    if not len(bad):
        return None
    i = int(bad[0])
    loss, norm = window[:, i].tolist()
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
    return step - window.shape[1] + 1 + i, what


# ----------------------------------------------------------------------------- setup and step

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


def replica_checksums(model: nn.Module, rt: Runtime) -> list[float]:
    """Per rank, a float64 sum over all parameters: all equal when DDP kept the replicas in sync."""
    sums = [float(sum(p.detach().double().sum() for p in model.parameters()))]
    if rt.distributed:
        gathered = [None] * rt.world_size
        dist.all_gather_object(gathered, sums[0])
        sums = gathered
    return sums


def prepare(task: Task, cfg: TrainConfig, rt: Runtime, *, fused: bool | None = None):
    """Seed this rank (``cfg.seed + rank``; deterministic algorithms if ``cfg.deterministic``), place
    ``task.model`` for training (:func:`fastfc.runtime.prepare_model` with ``cfg``'s precision,
    channels_last and compile) and build its optimiser (:func:`build_optimizer`; fused on CUDA when
    ``fused`` is None). ``task.model`` becomes the wrapped module.

    Returns:
        ``(prepared, optimizer)``; ``prepared.raw`` is the module checkpoints save.
    """
    torch.manual_seed(cfg.seed + rt.rank)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    model = prepare_model(task.model, rt, training=True, precision=cfg.precision,
                          channels_last=cfg.channels_last, compile=cfg.compile)
    task.model = model.module
    fused = rt.device.type == "cuda" if fused is None else fused
    return model, build_optimizer(cfg, model.raw.parameters(), fused=fused)


def train_step(task: Task, model: Prepared, optimizer, images: torch.Tensor, *, lr: float,
               cfg: TrainConfig, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on ``images`` (``[B,3,H,W]``, ``labels`` ``[B]``): the hot path.

    The whole loss (teacher included) runs under ``model.autocast()``: bf16 autocast, or nothing
    under fp32; the backward follows the forward's dtypes. Gradients are set to None rather than
    zeroed (no memset); the gradient norm is clipped at ``cfg.grad_clip`` over the raw parameters
    (DDP has already averaged them).

    Returns:
        ``(loss, grad_norm)``: 0-d device tensors, the norm before clipping; not synchronised, so
        the GPU is never waited on here (the :class:`Meter` checks both for non-finite values).
    """
    images = model.inputs(images)
    if labels is not None:
        labels = labels.to(model.device, non_blocking=True)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with model.autocast():
        loss = task.loss(images, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.raw.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.detach(), grad_norm


# ----------------------------------------------------------------------------- the loop

def train(task: Task, loader: Any, cfg: TrainConfig, rt: Runtime, *, resume: bool = False, fresh: bool = False,
          run_config: dict | None = None, command: str | None = None) -> dict:
    """Train ``task.model`` on ``loader`` (yielding ``(images [B,3,H,W], labels)`` per rank).

    ``loader``: an ffcv ``Loader`` (``indices``, ``batch_size``, ``len()``, a writable ``next_epoch``
    seeding its order). Each epoch is :meth:`TrainConfig.steps_per_epoch` steps, its last batch
    partial (ffcv pads every rank to ``ceil(N / ranks)`` images). A resume restores model, optimiser,
    step and RNG state and skips the batches of the epoch already seen: the lr at every later step equals the
    uninterrupted run's, on any number of ranks (with the same ranks and deterministic data and
    algorithms, so do the losses). How the run begins in ``cfg.out_dir`` (``resume``, ``fresh``, a
    torchrun restart or SLURM requeue, or a refusal) is :meth:`Checkpointer.start`'s (``command``: ``run_config``'s,
    for a checkpoint saved under older key names). Returns (and writes to summary.json) ``{"step", "epoch",
    "total_steps", "stopped_early", "replica_checksums", "final_loss"}``.

    Raises:
        Diverged: a non-finite loss, gradient norm or weights (nothing non-finite is written).
        CheckpointError: see :meth:`Checkpointer.start` (a refused start, an unusable checkpoint).
    """
    out, original_model = Path(cfg.out_dir), task.model
    model, optimizer = prepare(task, cfg, rt)
    plan = _plan(cfg, loader, rt)
    per_epoch, total = plan["steps_per_epoch"], plan["total_steps"]
    config = run_config or {"train": asdict(cfg)}
    ckpt = Checkpointer(out, rt, plan=plan, config=config, command=command)
    step = ckpt.start(model.raw, optimizer, resume=resume, fresh=fresh)
    metrics, meter, preempt = Metrics(out, rt.is_main, config, step), Meter(rt, task.flops_per_image), _Preemption()
    bar = tqdm(total=total, initial=step, desc="train", unit="step", disable=not rt.is_main, dynamic_ncols=True)
    stopped_early, last_loss, lr = False, float("nan"), cfg.lr
    try:
        while step < total and not stopped_early:
            batches = _epoch(loader, *divmod(step, per_epoch))
            for _ in range(step % per_epoch, per_epoch):
                with meter.waiting():
                    images, labels = next(batches)[:2]
                lr = scheduled_lr(cfg, step, total=total, steps_per_epoch=per_epoch)
                loss, grad_norm = train_step(task, model, optimizer, images, lr=lr, cfg=cfg, labels=labels)
                step += 1
                meter.record(loss, grad_norm, images.shape[0])
                bar.update()
                if step % cfg.log_every == 0 or step == total:
                    last_loss = _log(meter, metrics, bar, ckpt, step, lr)
                if step % cfg.checkpoint_every == 0:
                    _save(ckpt, meter, model.raw, optimizer, step, per_epoch)
                stop = preempt.requested or (cfg.stop_after is not None and step >= cfg.stop_after)
                if _all_agree(stop, rt) or step >= total:
                    stopped_early = step < total
                    break
            getattr(batches, "close", lambda: None)()  # stop ffcv's prefetch threads of a cut epoch
            _save(ckpt, meter, model.raw, optimizer, step, per_epoch, keep_every=cfg.keep_weights_every_epochs)
            if step % per_epoch == 0 and hasattr(task, "end_epoch"):  # e.g. the CIFAR test accuracies
                metrics.log(step, task.end_epoch(step // per_epoch - 1))
        if meter.pending:
            last_loss = _log(meter, metrics, bar, ckpt, step, lr)
        return _summarize(ckpt, metrics, model.raw, rt, step=step, plan=plan, stopped_early=stopped_early,
                          final_loss=last_loss)
    finally:
        bar.close()
        metrics.close()
        preempt.restore()
        task.model = original_model


def _summarize(ckpt: Checkpointer, metrics: Metrics, model: nn.Module, rt: Runtime, *, step: int, plan: dict,
               stopped_early: bool, final_loss: float) -> dict:
    """The run's summary (also written to summary.json); a finished run also writes ``weights.pt``."""
    summary = {"step": step, "epoch": step / plan["steps_per_epoch"], "total_steps": plan["total_steps"],
               "stopped_early": stopped_early, "replica_checksums": replica_checksums(model, rt),
               "final_loss": final_loss}
    if not stopped_early:
        ckpt.write_weights(model, "weights.pt", step=step)
    metrics.write_summary(summary)
    return summary


def _plan(cfg: TrainConfig, loader: Any, rt: Runtime) -> dict:
    """:meth:`TrainConfig.plan` for the loader's images; refuses a loader too short for it."""
    plan = cfg.plan(len(loader.indices), rt.world_size)
    if plan["per_rank_batch"] != loader.batch_size or len(loader) < plan["steps_per_epoch"]:
        raise ValueError(f"the loader yields {len(loader)} batches of {loader.batch_size} per rank; the plan needs "
                         f"{plan['steps_per_epoch']} of {plan['per_rank_batch']} (train.global_batch_size / ranks)")
    return plan


def _epoch(loader: Any, epoch: int, skip: int) -> Iterator:
    """An iterator over ``epoch`` (its order seeded by ``epoch``) past its first ``skip`` batches
    (a resume mid-epoch: the same order, without what was seen)."""
    loader.next_epoch = epoch
    batches = iter(loader)
    for _ in range(skip):
        next(batches)
    return batches


def _save(ckpt: Checkpointer, meter: Meter, model: nn.Module, optimizer, step: int, per_epoch: int, *,
          keep_every: int | None = None) -> None:
    """Checkpoint ``step``, unless a step since the last log went non-finite (then raise ``Diverged``);
    at the end of every ``keep_every``-th epoch also keep the weights (``weights_epochNNN.pt``)."""
    bad = meter.first_nonfinite(step)
    if bad is not None:
        raise ckpt.diverged(*bad)
    ckpt.save(model, optimizer, step=step, epoch=step // per_epoch)
    epochs, partial = divmod(step, per_epoch)
    if keep_every and not partial and epochs % keep_every == 0:
        ckpt.write_weights(model, f"weights_epoch{epochs:03d}.pt", step=step)


def _log(meter: Meter, metrics: Metrics, bar, ckpt: Checkpointer, step: int, lr: float) -> float:
    """Log the meter's window (or raise ``Diverged`` at its first non-finite step). Returns the loss."""
    values, bad = meter.flush(step)
    if bad is not None:
        raise ckpt.diverged(*bad)
    loss = values.pop("train/loss")
    metrics.log(step, {"train/loss": loss, "train/lr": lr, **values})
    bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", img_s=f"{values['perf/img_per_s']:.0f}")
    return loss
