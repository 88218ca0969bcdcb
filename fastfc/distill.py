"""Representation distillation: a frozen CLIP image encoder teaches a random-init student.

The objective of the paper (arXiv 2406.03345, docs/recipe.md): the teacher's projected image
embedding ``visual(x)`` is the target, unnormalised; ``loss = distill_weight * mse(student, teacher)``.
Teacher and student see the same augmented batch (RandomResizedCrop 0.9–1.0 + flip from the
beton), at the teacher's native resolution, normalised on the device with the teacher's mean/std.
The teacher runs in eval mode, without gradients, at the loop's precision (bf16 autocast or fp32).

ViT options of the original code: ``hidden_weight`` / ``attn_weight`` add MSE terms between the
hidden states / "attention maps" of the chosen ``blocks`` ("last", "all" or "0,5,11"), each averaged
over the blocks; the attention map is the token Gram matrix of the block's ``ln_1`` output
(:func:`token_gram`), not softmax attention;
``attn_init`` copies the teacher's attention weights into the student; ``oracle_norm_stats``
freezes the student's BatchNorm statistics to the teacher's.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastfc import config as configlib
from fastfc.distill_config import (DataConfig, DistillConfig, ObjectiveConfig, StudentConfig,  # noqa: F401
                                   TeacherConfig)  # (re-exported)
from fastfc.models import ENCODERS, Encoder, build_student, build_teacher, canonical_name
from fastfc.runtime import Runtime, setup_runtime
from fastfc.train import lr_at, train

IMAGENET_TRAIN_IMAGES = 1_281_167


# ----------------------------------------------------------------------------- ViT extras

def _resblocks(visual: nn.Module, arch: str) -> nn.ModuleList:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise ValueError(f"{arch}: attention/hidden-state distillation and attn_init need a ViT "
                         "(open_clip VisionTransformer); set objective.hidden_weight/attn_weight to 0")
    return blocks


def select_blocks(spec: str, depth: int) -> list[int]:
    """``"last"`` → [depth-1], ``"all"`` → all, ``"0,5,11"`` → those. Raises ``ValueError``."""
    if spec == "last":
        return [depth - 1]
    if spec == "all":
        return list(range(depth))
    chosen = [int(b) for b in spec.split(",")]
    if any(not 0 <= b < depth for b in chosen):
        raise ValueError(f"objective.blocks={spec!r}: indices must be in 0..{depth - 1}")
    return chosen


def token_gram(h: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """The paper's "attention map" of a block: ``(h / sqrt(E)) @ hᵀ`` of the block's layer-normed
    input ``h = ln_1(x)``, ``[B, Nt, E]`` (or ``[Nt, B, E]`` when not ``batch_first``) -> ``[B, Nt, Nt]``.
    No q/k projections, no heads, no softmax (the original code's definition, ``docs/recipe.md``)."""
    if not batch_first:
        h = h.transpose(0, 1)
    return (h / math.sqrt(h.shape[-1])) @ h.transpose(-1, -2)


class _Taps:
    """Forward hooks collecting, per chosen block, its output (hidden state) and the token Gram
    matrix of its ``ln_1`` output (:func:`token_gram`)."""

    def __init__(self, blocks: nn.ModuleList, chosen: list[int], hidden: bool, attn: bool, batch_first: bool):
        self.hidden, self.attn, self.handles = [], [], []
        for i in chosen:
            if hidden:
                self.handles.append(blocks[i].register_forward_hook(lambda m, a, out: self.hidden.append(out)))
            if attn:
                self.handles.append(blocks[i].ln_1.register_forward_hook(
                    lambda m, a, out: self.attn.append(token_gram(out, batch_first))))

    def take(self) -> tuple[list, list]:
        hidden, attn = self.hidden, self.attn
        self.hidden, self.attn = [], []
        return hidden, attn


def copy_attention(teacher: nn.Module, student: nn.Module, arch: str) -> None:
    """``attn_init``: copy every block's attention projection weights from teacher to student."""
    for t, s in zip(_resblocks(teacher, arch), _resblocks(student, arch)):
        s.attn.load_state_dict(t.attn.state_dict())


def freeze_norm_stats(teacher: nn.Module, student: nn.Module) -> int:
    """``oracle_norm_stats``: the student's BatchNorm layers use the teacher's running statistics
    and stay in eval mode (their statistics never update). Returns the number of layers frozen."""
    t_bn = {n: m for n, m in teacher.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    n = 0
    for name, m in student.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(t_bn[name].running_mean)
            m.running_var.copy_(t_bn[name].running_var)
            m.eval()
            n += 1
    return n


# ----------------------------------------------------------------------------- the task

def forward_flops(module: nn.Module, input_size: int, device) -> float:
    """Forward FLOPs for one ``input_size`` image, counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, input_size, input_size, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return float(counter.get_total_flops())


class DistillTask:
    """The distillation objective, for :func:`fastfc.train.train`.

    Args:
        teacher: a frozen :class:`~fastfc.models.Encoder` (eval, no grad).
        student: an :class:`~fastfc.models.Encoder` of the same architecture; ``student.visual``
            is what trains (``self.model``).
        objective: weights and ViT options.

    ``loss(images [B,3,S,S] normalised, labels ignored) -> scalar``:
    ``distill_weight·MSE(embedding [B, D]) + hidden_weight·mean_blocks MSE(block output [B, Nt, E])
    + attn_weight·mean_blocks MSE(token Gram [B, Nt, Nt])`` in float32, the original code's total.
    ``flops_per_image``: student forward+backward (3×) + teacher forward.
    """

    def __init__(self, teacher: Encoder, student: Encoder, objective: ObjectiveConfig, arch: str = ""):
        self.teacher, self.student, self.objective = teacher, student, objective
        self.model: nn.Module = student.visual
        self.flops_per_image: float | None = None
        self._taps = None
        if objective.attn_init:
            copy_attention(teacher.visual, student.visual, arch)
        if objective.oracle_norm_stats:
            freeze_norm_stats(teacher.visual, student.visual)
        if objective.hidden_weight or objective.attn_weight:
            blocks_t, blocks_s = _resblocks(teacher.visual, arch), _resblocks(student.visual, arch)
            chosen = select_blocks(objective.blocks, len(blocks_t))
            hidden, attn = bool(objective.hidden_weight), bool(objective.attn_weight)
            self._taps = tuple(_Taps(blocks, chosen, hidden, attn, getattr(v.transformer, "batch_first", True))
                               for blocks, v in ((blocks_t, teacher.visual), (blocks_s, student.visual)))

    def to(self, device) -> "DistillTask":
        self.teacher.visual.to(device)
        self.model.to(device)
        self.flops_per_image = 4 * forward_flops(self.teacher.visual, self.teacher.input_size, device)
        return self

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """``labels`` are ignored: distillation needs only the teacher."""
        with torch.no_grad():
            target = self.teacher.visual(images)
        emb = self.model(images)
        loss = self.objective.distill_weight * F.mse_loss(emb.float(), target.float())
        if self._taps is not None:
            (t_hidden, t_attn), (s_hidden, s_attn) = self._taps[0].take(), self._taps[1].take()
            if t_hidden:
                loss = loss + self.objective.hidden_weight * _mean_mse(s_hidden, t_hidden)
            if t_attn:
                loss = loss + self.objective.attn_weight * _mean_mse(s_attn, t_attn)
        return loss


def _mean_mse(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """MSE per chosen block (float32, teacher detached), averaged over the blocks."""
    return sum(F.mse_loss(s.float(), t.detach().float()) for s, t in zip(student, teacher)) / len(student)


# ----------------------------------------------------------------------------- the run

def build_task(cfg: DistillConfig) -> DistillTask:
    s, t = cfg.encoder, cfg.teacher
    with torch.random.fork_rng(devices=[]):  # a random-init teacher (tests) is the same on every rank
        torch.manual_seed(s.seed + 10_000)
        teacher = build_teacher(s.name, pretrained=t.pretrained if not t.weights else None, weights=t.weights)
    student = build_student(s.name, seed=s.seed, init=s.init)
    return DistillTask(teacher, student, cfg.objective, arch=s.name)


def plan(cfg: DistillConfig, world_size: int) -> dict:
    """The numbers ``--dry-run`` prints: per-rank batch, images, steps per epoch, total steps
    (:meth:`fastfc.train.TrainConfig.plan`: the steps do not depend on ``world_size``)."""
    beton = Path(cfg.data.train_beton)
    if beton.is_file():
        from fastfc.data.betons import beton_samples
        images, source = beton_samples(beton), str(beton)
    else:
        images, source = IMAGENET_TRAIN_IMAGES, f"{beton} not found: assuming ImageNet-1k train"
    counts = cfg.train.plan(images, world_size)
    return {"world_size": world_size, "global_batch": cfg.train.global_batch_size,
            "per_rank_batch": counts["per_rank_batch"], "train_images": images, "images_from": source,
            "steps_per_epoch": counts["steps_per_epoch"], "total_steps": counts["total_steps"],
            "warmup_steps": cfg.train.warmup_steps,
            "lr_first": lr_at(0, base=cfg.train.lr, warmup=cfg.train.warmup_steps, total=counts["total_steps"])}


def run(cfg: DistillConfig, *, resume: bool = False, fresh: bool = False, rt: Runtime | None = None) -> dict:
    """Distil on the beton under torchrun (or one process). Returns :func:`fastfc.train.train`'s summary;
    ``resume``/``fresh``: how the run begins (:meth:`fastfc.checkpoint.Checkpointer.start`)."""
    from fastfc.data.ffcv import check_stored_size, make_loader

    if not Path(cfg.data.train_beton).is_file():  # before the teacher is built (and maybe downloaded)
        raise FileNotFoundError(f"data.train_beton = {cfg.data.train_beton}: no such beton; create it with "
                                "`python -m data_prep.imagenet` or point --set data.train_beton=... at it")
    check_stored_size(cfg.data.train_beton, ENCODERS[canonical_name(cfg.encoder.name)].input_size)
    rt = rt or setup_runtime()
    per_rank = cfg.train.per_rank_batch(rt.world_size)
    task = build_task(cfg).to(rt.device)
    loader = make_loader(cfg.data.train_beton, train=True, augment=cfg.data.augment, batch_size=per_rank,
                         resolution=task.teacher.input_size, mean=task.teacher.mean, std=task.teacher.std,
                         num_workers=cfg.data.workers, device=rt.device, distributed=rt.distributed,
                         seed=cfg.train.seed,
                         dtype=np.float16 if rt.device.type == "cuda" and cfg.train.precision == "bf16" else np.float32)
    return train(task, loader, cfg.train, rt, resume=resume, fresh=fresh, run_config=configlib.to_dict(cfg),
                 command=cfg.COMMAND)


def main(args, cfg: DistillConfig) -> int:
    """``fastfc distill``: see ``python -m fastfc distill --help``. ``cfg``: the config resolved once
    by the command line (:func:`fastfc.config.load` of ``args.config`` and ``args.set``)."""
    if args.dry_run:
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        summary = {"config": configlib.to_dict(cfg), "plan": plan(cfg, world)}
        if rank == 0:
            print(json.dumps(summary, indent=2, default=str))
        return 0
    summary = run(cfg, resume=args.resume, fresh=args.fresh)
    out = Path(cfg.train.out_dir)
    if int(os.environ.get("RANK", "0")) != 0:  # one line per run, not one per rank
        return 0
    if summary["stopped_early"]:
        print(f"stopped at step {summary['step']}; resume with --resume (checkpoint: {out / 'checkpoint.pt'})")
    else:
        print(f"done: {summary['step']} steps, final loss {summary['final_loss']:.4g}; "
              f"student weights: {out / 'weights.pt'}")
    return 0
