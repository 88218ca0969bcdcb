"""Checkpoints: saving and resuming a training run, and reading every weights file fastfc writes.

A run folder (``train.out_dir``) holds:

- ``checkpoint.pt``: ``{"model", "optimizer", "step", "epoch", "plan", "rng", "config"}``, the
  latest state, written to a temporary name, read back and checked, then renamed;
- ``checkpoint.prev.pt``: the one before it, kept until a newer one is complete and verified, so a
  crash during a save always leaves a checkpoint to resume from;
- ``weights_epochNNN.pt`` (every ``keep_weights_every_epochs`` epochs) and ``weights.pt`` (at the
  end): the student's ``state_dict``.

A run starts in its folder by :meth:`Checkpointer.start`: a folder holding a checkpoint is never
started over by accident (refused without ``--resume`` or ``--fresh``), and a torchrun restart or
SLURM requeue continues the run by itself (torchtitan/Lightning-style auto-resume).

Everything in them is a tensor or a plain Python value (the RNG states too), so every file loads
with ``torch.load(weights_only=True)``, and ``checkpoint.pt`` also serves as ``--weights`` (it is
``{"model": state_dict, ...}``). No non-finite weights are ever written. A file that cannot be
used is refused in one line that names it and says what to do.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fastfc.atomic import atomic_path
from fastfc.config import upgrade
from fastfc.safe_load import CheckpointError, read_file  # noqa: F401  (re-exported)
from fastfc.runtime import Runtime

CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
_REQUIRED = ("model", "optimizer", "step")
_PLAN_KEYS = ("train_images", "global_batch", "steps_per_epoch", "total_steps")  # what a resume must keep
# Settings a resumed run may change without a note: how it is run, not what it computes.
# What a run writes into its folder: what --fresh moves aside (weights_epochNNN.pt too).
_RUN_FILES = {CHECKPOINT, PREVIOUS, "metrics.jsonl", "summary.json", "config.json", "weights.pt", "tb"}
_RESTART_COUNTS = (("TORCHELASTIC_RESTART_COUNT", "torchrun restart"), ("SLURM_RESTART_COUNT", "SLURM requeue"))
_START_OVER = "start over with --fresh (moves the old run aside)"
_RUN_CONTROL = {"stop_after", "out_dir", "log_every", "checkpoint_every", "compile", "workers",
                "keep_weights_every_epochs"}


class Diverged(ValueError):
    """The loss, the gradient norm or the weights became non-finite. A ValueError, so the command
    line reports it in one line (and exits non-zero), like other bad settings."""


# ----------------------------------------------------------------------------- reading

def load_checkpoint(path: str | Path, *, what_to_do: str = f"resume from checkpoint.prev.pt or {_START_OVER}") -> dict:
    """A training checkpoint written by :class:`Checkpointer` (see the module docstring).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: unreadable (see :func:`read_file`), or not a training checkpoint.
    """
    state = read_file(path, what_to_do=what_to_do)
    missing = [k for k in _REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a fastfc training checkpoint (no {', '.join(missing)}: a weights "
                              f"file?); {what_to_do}")
    return state


# ----------------------------------------------------------------------------- RNG state, as plain values

def rng_state() -> dict:
    """This process's torch, numpy and Python RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": [version, list(internal), gauss_next]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (also the numpy-tuple form of older checkpoints)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np_state = (np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                    np_state["has_gauss"], np_state["gauss"])
    np.random.set_state(np_state)
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def all_finite(module: nn.Module) -> bool:
    """Whether every floating-point parameter and buffer of ``module`` is finite (one host sync)."""
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def _show(plan: dict) -> str:
    return ", ".join(f"{k} {plan.get(k)}" for k in _PLAN_KEYS)


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-able plain values (tuples become lists; other objects their ``str``)."""
    return json.loads(json.dumps(obj, default=str))


def relaunch() -> str | None:
    """How this process was relaunched: ``"torchrun restart N"`` (``TORCHELASTIC_RESTART_COUNT`` > 0,
    torchrun ``--max-restarts``) or ``"SLURM requeue N"`` (``SLURM_RESTART_COUNT`` > 0); None for a
    first launch."""
    for var, what in _RESTART_COUNTS:
        count = os.environ.get(var, "").strip()
        if count.isdigit() and int(count) > 0:
            return f"{what} {count}"
    return None


def _step_of(path: Path) -> str:
    """The step a checkpoint holds, for a message ("?" when it cannot be read)."""
    try:
        return str(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return "?"


# ----------------------------------------------------------------------------- the checkpointer

class Checkpointer:
    """Saving and resuming one run folder, on every rank (rank 0 writes).

    Args:
        out_dir: the run folder.
        rt: the runtime; :meth:`save` and :meth:`resume` are collective under torchrun.
        plan: ``{"train_images", "global_batch", "steps_per_epoch", "total_steps", "world_size"}``;
            a resume that would change any of the first four is refused.
        config: the run's resolved config; a resume whose sections other than ``train`` and
            ``data`` differ is refused (another run); changed ``train``/``data`` values are noted.
        command: the command whose config ``config`` is (``"distill"``): a checkpoint saved with
            its older key names (:data:`fastfc.config.RENAMED`) is compared under the new names.
    """

    def __init__(self, out_dir: str | Path, rt: Runtime, *, plan: dict, config: dict, command: str | None = None):
        self.out, self.rt, self.plan, self.config = Path(out_dir), rt, plan, _plain(config)
        self.command = command
        self.path, self.prev = self.out / CHECKPOINT, self.out / PREVIOUS
        self.last_good: tuple[Path, int] | None = None  # (file, step) a diverged run can resume from
        self._saved_step: int | None = None
        self._rotate = False  # whether checkpoint.pt is known good and belongs to this run

    def note(self, text: str) -> None:
        """One line on rank 0."""
        if self.rt.is_main:
            print(f"[checkpoint] {text}", flush=True)

    # -- starting

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, resume: bool = False,
              fresh: bool = False) -> int:
        """Begin the run in ``out_dir`` and return its first step: 0, or the checkpoint's (:meth:`resume`).
        Collective: rank 0 decides from the folder, every rank follows.

        - a relaunch (:func:`relaunch`: torchrun restart, SLURM requeue) or ``resume``: continue
          from the checkpoint, or start when none was saved yet (said in one line);
        - ``fresh`` on a first launch: move the old run's files to ``out_dir/replaced-<UTC time>/``
          (nothing is deleted), then start;
        - neither, with a checkpoint in ``out_dir``: refused, nothing touched.

        Raises:
            CheckpointError: a checkpoint exists and neither ``resume`` nor ``fresh`` was given (one
                line naming it and both choices); or what :meth:`resume` raises.
        """
        decision = [self._choose(resume, fresh) if self.rt.is_main else None]
        if self.rt.distributed:
            dist.broadcast_object_list(decision, src=0)
        action = decision[0]
        if action.startswith("refuse:"):
            raise CheckpointError(action[len("refuse:"):])
        if action == "fresh" and self.rt.is_main:
            self._move_aside()
        return self.resume(model, optimizer) if action == "resume" else 0

    def _choose(self, resume: bool, fresh: bool) -> str:
        """``"resume"``, ``"start"``, ``"fresh"`` or ``"refuse:<message>"`` (rank 0, reads the folder only)."""
        saved = [p for p in (self.path, self.prev) if p.is_file()]
        again = relaunch()
        if again and fresh:
            self.note(f"{again}: --fresh applies to the first launch only; continuing this run")
        if again or resume:
            if not saved:
                self.note(f"{again or '--resume'}: no checkpoint in {self.out} yet; starting the run")
            return "resume" if saved else "start"
        if fresh:
            return "fresh"
        if saved:
            return (f"refuse:{saved[0]} holds this run's progress (step {_step_of(saved[0])}); continue it with "
                    f"--resume, or start over with --fresh (moves the old run to {self.out}/replaced-<time>/)")
        return "start"

    def _move_aside(self) -> None:
        """Move the run's files (:data:`_RUN_FILES`, ``weights_epochNNN.pt``) into a new
        ``replaced-<UTC time>`` folder inside ``out_dir``."""
        if not self.out.is_dir():
            return
        old = sorted(p.name for p in self.out.iterdir()
                     if p.name in _RUN_FILES or re.fullmatch(r"weights_epoch\d+\.pt", p.name))
        if not old:
            return
        stamp, n = time.strftime("replaced-%Y%m%d-%H%M%S", time.gmtime()), 0
        dest = self.out / stamp
        while dest.exists():
            n += 1
            dest = self.out / f"{stamp}-{n}"
        dest.mkdir()
        for name in old:
            os.replace(self.out / name, dest / name)
        self.note(f"--fresh: moved the previous run ({', '.join(old)}) to {dest}")

    # -- resuming

    def resume(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Load the latest usable checkpoint into ``model``/``optimizer``, restore this rank's RNG
        state, and return its step. Falls back to ``checkpoint.prev.pt`` (and says so) when
        ``checkpoint.pt`` is missing or damaged.

        Raises:
            FileNotFoundError: no checkpoint at all.
            CheckpointError: none readable, or from another run / another plan (one line each).
        """
        state, used = self._latest()
        self._check_fits(state, used)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:  # load_state_dict: a header line, then the details
            lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
            detail = lines[min(1, len(lines) - 1)][:160]
            raise CheckpointError(f"{used}: does not fit this run's model or optimiser ({detail}): it comes "
                                  f"from another run; point train.out_dir elsewhere or {_START_OVER}") from None
        step = int(state["step"])
        self._restore_rng(state.get("rng"), step)
        self.last_good, self._saved_step, self._rotate = (used, step), step, used == self.path
        return step

    def _latest(self) -> tuple[dict, Path]:
        problems = []
        for path in (self.path, self.prev):
            if not path.is_file():
                problems.append(f"{path.name} is missing")
                continue
            try:
                state = load_checkpoint(path, what_to_do="")
            except CheckpointError as e:
                problems.append(str(e).rstrip("; "))
                continue
            if problems:
                self.note(f"{problems[0]}; resuming from {path} (step {state['step']}) instead")
            return state, path
        if not self.path.is_file() and not self.prev.is_file():
            raise FileNotFoundError(f"{self.path}: no checkpoint to resume from ({_START_OVER})")
        raise CheckpointError(f"nothing to resume from in {self.out}: {'; '.join(problems)}; {_START_OVER}")

    def _check_fits(self, state: dict, path: Path) -> None:
        """Refuse another plan or another run (one line); note another world size or changed settings."""
        saved = state.get("plan")
        if saved is None:
            self.note(f"{path} predates saved plans: the schedule cannot be checked against it")
        elif any(saved.get(k) != self.plan[k] for k in _PLAN_KEYS):
            raise CheckpointError(f"{path}: planned for {_show(saved)}; this run plans {_show(self.plan)}: resuming "
                                  "would change the schedule; resume with the data, epochs, max_steps and "
                                  f"global_batch_size it was started with, or {_START_OVER}")
        elif saved.get("world_size") != self.rt.world_size:
            self.note(f"{path} was written by {saved.get('world_size')} processes, this run has "
                      f"{self.rt.world_size}: the schedule continues (step {state['step']} of "
                      f"{self.plan['total_steps']}), but the data order, the per-rank batch (BatchNorm "
                      "statistics) and the random streams differ from an uninterrupted run")
        theirs = upgrade(_plain(state.get("config") or {}), self.command)  # older key names, quietly
        for section in sorted((set(theirs) | set(self.config)) - {"train", "data"}):
            if theirs.get(section) != self.config.get(section):
                raise CheckpointError(f"{path}: comes from another run ({section}: {theirs.get(section)} there, "
                                      f"{self.config.get(section)} here); point train.out_dir elsewhere or "
                                      f"{_START_OVER}")
        changed = [f"{section}.{k} {a!r} -> {self.config[section].get(k)!r}"
                   for section in ("train", "data") if section in theirs and section in self.config
                   for k, a in theirs[section].items() if k not in _RUN_CONTROL and self.config[section].get(k) != a]
        if changed:
            self.note(f"resuming with changed settings: {', '.join(changed)}")

    def _restore_rng(self, saved: list | dict | None, step: int) -> None:
        states = [saved] if isinstance(saved, dict) else saved or []
        if len(states) == self.rt.world_size:
            set_rng_state(states[self.rt.rank])
        else:  # another world size: a fresh, distinct stream per rank (the data order differs anyway)
            torch.manual_seed(1_000_003 * step + self.rt.rank)

    # -- saving

    def diverged(self, step: int, what: str) -> Diverged:
        """The error to raise when ``what`` went non-finite at ``step``: names the last good checkpoint."""
        if self.last_good is None:
            where = ("no checkpoint was saved before it; start afresh with a lower train.lr or a longer "
                     "train.warmup_steps")
        else:
            where = (f"last good checkpoint: {self.last_good[0]} (step {self.last_good[1]}); resume from it with "
                     "a lower train.lr (--resume --set train.lr=...)")
        return Diverged(f"step {step}: {what}; stopped without saving; {where}")

    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, step: int, epoch: int) -> None:
        """Write ``checkpoint.pt`` for ``step`` (collective: every rank's RNG state is gathered).

        The new file is written under a temporary name and read back; only then does the old
        ``checkpoint.pt`` become ``checkpoint.prev.pt`` and the new one take its name. A second save
        of the same step is skipped.

        Raises:
            Diverged: the weights are not finite (nothing is written).
        """
        if step == self._saved_step:
            return
        if not all_finite(model):
            raise self.diverged(step, "the weights are not finite")
        states = [rng_state()]
        if self.rt.distributed:
            states = [None] * self.rt.world_size
            dist.all_gather_object(states, rng_state())
        if self.rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "epoch": epoch, "plan": dict(self.plan), "rng": states, "config": self.config}
            with atomic_path(self.path) as tmp:
                torch.save(state, tmp)
                self._verify(tmp, step, set(state["model"]))
                if self._rotate and self.path.is_file():
                    os.replace(self.path, self.prev)
        self.last_good, self._saved_step, self._rotate = (self.path, step), step, True

    @staticmethod
    def _verify(tmp: Path, step: int, keys: set) -> None:
        """Read the just-written file back (memory-mapped: the zip index and every record's header)."""
        back = torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        if back.get("step") != step or set(back["model"]) != keys:
            raise CheckpointError(f"{tmp}: the checkpoint read back differs from the one written; check the disk")

    def write_weights(self, model: nn.Module, name: str, *, step: int) -> Path:
        """Atomically write ``model.state_dict()`` to ``out_dir/name`` on rank 0 (e.g. ``weights.pt``).

        Raises:
            Diverged: the weights are not finite (nothing is written).
        """
        if not all_finite(model):
            raise self.diverged(step, "the weights are not finite")
        path = self.out / name
        if self.rt.is_main:
            with atomic_path(path) as tmp:
                torch.save(model.state_dict(), tmp)
        return path
