"""The training loop and the distillation objective: real ffcv, real torchrun (gloo), tiny model."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastfc import config as configlib
from fastfc.distill import DistillConfig, plan, run
from fastfc.checkpoint import load_checkpoint
from fastfc.runtime import Runtime
from fastfc.train import TrainConfig, lr_at

REPO = Path(__file__).resolve().parents[1]


def tiny_config(beton: Path, out: Path, **train) -> DistillConfig:
    cfg = DistillConfig()
    cfg.encoder.name, cfg.teacher.pretrained = "tiny", None
    cfg.data.train_beton, cfg.data.workers, cfg.data.augment = str(beton), 1, False
    cfg.train = TrainConfig(**{"epochs": 1, "lr": 1e-3, "warmup_steps": 2, "global_batch_size": 8,
                               "out_dir": str(out), "log_every": 1, "checkpoint_every": 1000,
                               "compile": False, "precision": "fp32", "deterministic": True, **train})
    return cfg


def write_toml(cfg: DistillConfig | dict, path: Path) -> Path:
    lines = []
    for section, values in (cfg if isinstance(cfg, dict) else configlib.to_dict(cfg)).items():
        lines.append(f"[{section}]")
        for k, v in values.items():
            v = "" if v is None else list(v) if isinstance(v, tuple) else v  # TOML has no null
            lines.append(f"{k} = {json.dumps(v)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def with_older_keys(config: dict) -> dict:
    """A resolved distill config (:func:`fastfc.config.to_dict`) under the key names it had before
    ``[encoder]`` and ``[teacher]``: ``[model] arch, student_seed, init, teacher_pretrained,
    teacher_weights`` and ``data.num_workers``."""
    c = json.loads(json.dumps(config))
    e, t = c.pop("encoder"), c.pop("teacher")
    c["data"]["num_workers"] = c["data"].pop("workers")
    return {"model": {"arch": e["name"], "teacher_pretrained": t["pretrained"], "teacher_weights": t["weights"],
                      "student_seed": e["seed"], "init": e["init"]}, **c}


def metrics(out: Path) -> list[dict]:
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


def one_process() -> Runtime:
    return Runtime()


# ------------------------------------------------------------------ schedule

def test_warmup_starts_above_zero_and_reaches_base_exactly():
    lrs = [lr_at(s, base=1e-3, warmup=5, total=100) for s in range(100)]
    assert lrs[0] == pytest.approx(2e-4, rel=1e-12) and lrs[0] > 0
    assert lrs[4] == 1e-3 and lrs[5] == 1e-3  # end of warmup, start of cosine
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # cosine decays monotonically
    assert 0 < lrs[-1] < 1e-6


def test_first_step_changes_the_student_and_weights_load_as_an_encoder(small_beton, tmp_path):
    cfg = tiny_config(small_beton, tmp_path, max_steps=1, warmup_steps=5)
    from fastfc.distill import build_task
    from fastfc.models import build_encoder

    before = {k: v.clone() for k, v in build_task(cfg).model.state_dict().items()}
    run(cfg, rt=one_process())
    after = torch.load(tmp_path / "weights.pt", weights_only=True)
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert changed, "the first update must not be a no-op"
    assert metrics(tmp_path)[0]["train/lr"] == pytest.approx(2e-4)
    encoder = build_encoder("tiny", weights=tmp_path / "weights.pt")  # the probe stage's way in
    assert all(torch.equal(encoder.visual.state_dict()[k], after[k]) for k in after)


# ------------------------------------------------------------------ resume

def test_resume_reproduces_lr_and_losses_bit_for_bit(small_beton, tmp_path):
    kw = dict(max_steps=10, warmup_steps=2, lr=1.0)
    whole = run(tiny_config(small_beton, tmp_path / "whole", **kw), rt=one_process())
    assert not whole["stopped_early"] and whole["step"] == 10
    first = run(tiny_config(small_beton, tmp_path / "parts", stop_after=4, **kw), rt=one_process())
    assert first["stopped_early"] and first["step"] == 4
    assert load_checkpoint(tmp_path / "parts" / "checkpoint.pt")["step"] == 4
    run(tiny_config(small_beton, tmp_path / "parts", **kw), rt=one_process(), resume=True)
    a = {m["step"]: m for m in metrics(tmp_path / "whole")}
    b = {m["step"]: m for m in metrics(tmp_path / "parts")}
    for step in range(5, 11):  # optimiser steps 4..9 (0-based), logged after the update
        assert abs(a[step]["train/lr"] - b[step]["train/lr"]) <= 1e-12
        assert a[step]["train/loss"] == b[step]["train/loss"], step
    assert a[10]["train/lr"] < a[5]["train/lr"]  # the cosine really moved
    w1 = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)
    w2 = torch.load(tmp_path / "parts" / "weights.pt", weights_only=True)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_sigterm_leaves_a_loadable_checkpoint_and_exits_zero(small_beton, tmp_path):
    cfg = tiny_config(small_beton, tmp_path / "run", max_steps=100_000, epochs=1000)
    toml = write_toml(cfg, tmp_path / "cfg.toml")
    proc = subprocess.Popen([sys.executable, "-m", "fastfc", "distill", "--config", str(toml)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] >= 3 and set(ckpt) >= {"model", "optimizer", "step", "epoch", "rng", "config"}
    assert ckpt["config"]["encoder"]["name"] == "tiny"
    assert "resume with --resume" in output
    assert not (tmp_path / "run" / "weights.pt").exists()


# ------------------------------------------------------------------ distributed, compile

@pytest.mark.slow
def test_torchrun_two_ranks_loss_decreases_and_replicas_agree(small_beton, tmp_path):
    cfg = tiny_config(small_beton, tmp_path / "run", max_steps=30, warmup_steps=3, lr=3e-3, precision="bf16",
                      deterministic=False, log_every=5)
    cfg.data.augment = True
    toml = write_toml(cfg, tmp_path / "cfg.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "fastfc", "distill", "--config", str(toml)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("done: 30 steps") == 1, done.stdout  # rank 0 reports, once
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    sums = summary["replica_checksums"]
    assert len(sums) == 2 and sums[0] == sums[1] and sums[0] != 0
    losses = [m["train/loss"] for m in metrics(tmp_path / "run")]
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0], losses
    assert all(m["perf/img_per_s"] > 0 and 0 <= m["perf/data_wait"] <= 1 for m in metrics(tmp_path / "run"))


def test_compiled_cpu_step_matches_eager(small_beton, tmp_path):
    from torch._dynamo.utils import counters

    kw = dict(max_steps=3, precision="bf16", deterministic=False)
    eager = run(tiny_config(small_beton, tmp_path / "eager", compile=False, **kw), rt=one_process())
    graphs_before = counters["stats"]["unique_graphs"]
    compiled = run(tiny_config(small_beton, tmp_path / "compiled", compile=True, **kw), rt=one_process())
    assert counters["stats"]["unique_graphs"] > graphs_before  # dynamo really compiled the student
    a = [m["train/loss"] for m in metrics(tmp_path / "eager")]
    b = [m["train/loss"] for m in metrics(tmp_path / "compiled")]
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=5e-2)  # bf16 tolerance
    assert eager["step"] == compiled["step"] == 3


# ------------------------------------------------------------------ config and dry run

def test_dry_run_plan_and_uneven_batch_is_refused(small_beton, tmp_path):
    cfg = tiny_config(small_beton, tmp_path, global_batch_size=8, epochs=2)
    p = plan(cfg, world_size=2)
    assert p["per_rank_batch"] == 4 and p["train_images"] == 300
    assert p["steps_per_epoch"] == 38 and p["total_steps"] == 2 * 38  # 37 batches of 8 and one of 4
    with pytest.raises(ValueError, match="does not split evenly over 3 ranks"):
        plan(cfg, world_size=3)


def test_config_overrides_and_unknown_keys(tmp_path):
    toml = write_toml(DistillConfig(), tmp_path / "c.toml")
    cfg = configlib.load(DistillConfig, toml, ["train.lr=5e-4", "encoder.name=RN101", "data.augment=false"])
    assert cfg.train.lr == 5e-4 and cfg.encoder.name == "RN101" and cfg.data.augment is False
    with pytest.raises(configlib.ConfigError, match="train.lrr"):
        configlib.load(DistillConfig, toml, ["train.lrr=1"])
    with pytest.raises(configlib.ConfigError, match="global_batch_size"):
        configlib.load(DistillConfig, toml, ["train.global_batch_size=0"])


# ------------------------------------------------------------------ world size (63 images, global batch 8)

def issue_config(beton: Path, out: Path, **train) -> DistillConfig:
    """63 images, global batch 8, 2 epochs, warmup 2: 8 steps per epoch (the last of 7 images), 16 in
    all, at any world size."""
    return tiny_config(beton, out, **{"epochs": 2, "warmup_steps": 2, **train})


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), "-m", "fastfc", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


def test_steps_per_epoch_come_from_images_and_global_batch_only(beton63, tmp_path):
    cfg = issue_config(beton63, tmp_path)
    for world in (1, 2, 8):
        p = plan(cfg, world_size=world)
        assert (p["steps_per_epoch"], p["total_steps"], p["per_rank_batch"]) == (8, 16, 8 // world)
    cfg.train.global_batch_size = 64  # fewer images than one batch: one partial step, as the original
    assert (plan(cfg, world_size=1)["steps_per_epoch"], plan(cfg, world_size=2)["total_steps"]) == (1, 2)
    with pytest.raises(ValueError, match="0 training images: the training set is empty"):
        TrainConfig().steps_per_epoch(0)


def test_imagenet_epoch_keeps_the_last_partial_batch_at_every_world_size():
    """The original's DataLoader (drop_last=False; DistributedSampler padding): 5,005 steps per epoch
    of 1,281,167 images at 256 (5,004 x 256 + 143), 250,250 in RN50's 50 epochs."""
    cfg = TrainConfig(epochs=50, global_batch_size=256)
    for world in (1, 2, 8):
        per_rank_images = -(-1_281_167 // world)  # DistributedSampler pads each rank to ceil(N / ranks)
        per_rank_steps = -(-per_rank_images // (256 // world))  # a DataLoader keeping the partial batch
        p = cfg.plan(1_281_167, world)
        assert p["steps_per_epoch"] == per_rank_steps == 5_005 and p["total_steps"] == 250_250, world


def test_ffcv_training_loader_yields_the_partial_batch_and_resumes_through_it(beton63, tmp_path):
    from fastfc.data.ffcv import make_loader
    from fastfc.models import CLIP_MEAN, CLIP_STD

    loader = make_loader(beton63, train=True, augment=False, batch_size=8, resolution=32, mean=CLIP_MEAN,
                         std=CLIP_STD, num_workers=1)
    sizes, seen = [], []
    for images, labels in loader:
        sizes.append(images.shape[0])
        seen.extend(labels.flatten().tolist())
    assert sizes == [8] * 7 + [7] and len(seen) == 63 and sorted(seen) == sorted([c for c in range(9)] * 7)
    whole = run(issue_config(beton63, tmp_path / "whole"), rt=one_process())
    assert whole["step"] == 16 and whole["epoch"] == 2.0
    run(issue_config(beton63, tmp_path / "parts", stop_after=7), rt=one_process())  # stop before the partial batch
    run(issue_config(beton63, tmp_path / "parts"), rt=one_process(), resume=True)
    a = {m["step"]: m["train/loss"] for m in metrics(tmp_path / "whole")}
    b = {m["step"]: m["train/loss"] for m in metrics(tmp_path / "parts")}
    assert sorted(a) == sorted(b) == list(range(1, 17)) and all(a[s] == b[s] for s in range(8, 17))
    w1 = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)
    w2 = torch.load(tmp_path / "parts" / "weights.pt", weights_only=True)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_two_rank_run_does_the_steps_the_dry_run_plans(beton63, tmp_path, monkeypatch, capsys):
    from fastfc.cli import main

    toml = write_toml(issue_config(beton63, tmp_path / "run"), tmp_path / "cfg.toml")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["distill", "--config", str(toml), "--dry-run"]) == 0
    planned = json.loads(capsys.readouterr().out)["plan"]
    assert (planned["steps_per_epoch"], planned["total_steps"]) == (8, 16)
    done = torchrun(["distill", "--config", str(toml)])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("done: 16 steps") == 1, done.stdout  # 14 if the partial batch were dropped
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["total_steps"] == summary["step"] == 16 and summary["epoch"] == 2.0
    lrs = {m["step"]: m["train/lr"] for m in metrics(tmp_path / "run")}
    assert sorted(lrs) == list(range(1, 17))
    assert all(abs(lrs[s] - lr_at(s - 1, base=1e-3, warmup=2, total=16)) <= 1e-12 for s in lrs)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 16 and state["epoch"] == 2 and state["plan"]["world_size"] == 2
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])


def test_resume_on_another_world_size_continues_the_same_schedule(beton63, tmp_path):
    whole = run(issue_config(beton63, tmp_path / "whole"), rt=one_process())
    assert whole["step"] == whole["total_steps"] == 16
    first = run(issue_config(beton63, tmp_path / "parts", stop_after=3), rt=one_process())
    assert first["stopped_early"] and first["step"] == 3
    toml = write_toml(issue_config(beton63, tmp_path / "parts"), tmp_path / "cfg.toml")
    done = torchrun(["distill", "--config", str(toml), "--resume"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("done: 16 steps") == 1, done.stdout
    assert "written by 1 processes, this run has 2" in done.stdout and "data order" in done.stdout
    a = {m["step"]: m["train/lr"] for m in metrics(tmp_path / "whole")}
    b = {m["step"]: m["train/lr"] for m in metrics(tmp_path / "parts")}
    assert sorted(a) == sorted(b) == list(range(1, 17))
    assert b[4] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * 1 / 14)), abs=1e-12)  # step 3: cosine 1/(16-2)
    assert all(abs(a[s] - b[s]) <= 1e-12 for s in a)


def test_resume_refuses_a_different_plan_or_another_run_in_one_line(beton63, tmp_path):
    run(issue_config(beton63, tmp_path, stop_after=3), rt=one_process())
    for change, expected in [({"global_batch_size": 16}, "resuming would change the schedule"),
                             ({"max_steps": 20}, "resuming would change the schedule")]:
        with pytest.raises(ValueError, match=expected) as e:
            run(issue_config(beton63, tmp_path, **change), rt=one_process(), resume=True)
        assert "checkpoint.pt" in str(e.value) and "\n" not in str(e.value)
    other = issue_config(beton63, tmp_path)
    other.encoder.seed = 1
    with pytest.raises(ValueError, match=r"checkpoint\.pt: comes from another run \(encoder: .*start over with --fresh") \
            as e:
        run(other, rt=one_process(), resume=True)
    assert "\n" not in str(e.value)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3  # nothing was overwritten


# ------------------------------------------------------------------ divergence

def strict_json_lines(path: Path) -> list[dict]:
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_diverged_run_exits_nonzero_in_one_line_and_keeps_the_last_good_checkpoint(beton63, tmp_path):
    cfg = issue_config(beton63, tmp_path / "run", lr=1e30, warmup_steps=1, max_steps=10, checkpoint_every=1)
    toml = write_toml(cfg, tmp_path / "cfg.toml")
    done = subprocess.run([sys.executable, "-m", "fastfc", "distill", "--config", str(toml)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    errors = [l for l in done.stderr.splitlines() if "error:" in l]
    assert len(errors) == 1, done.stderr
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert "step 2: the loss is nan" in errors[0] and f"last good checkpoint: {ckpt} (step 1)" in errors[0]
    assert "done:" not in done.stdout and not (tmp_path / "run" / "weights.pt").exists()
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values()
                                      if v.is_floating_point())
    logged = strict_json_lines(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in logged] == [1]


def test_divergence_between_log_lines_names_its_step(beton63, tmp_path):
    from fastfc.checkpoint import Diverged

    cfg = issue_config(beton63, tmp_path, lr=1e30, warmup_steps=1, max_steps=10, log_every=4)
    with pytest.raises(Diverged, match=r"^step 2: the loss is nan; .*no checkpoint was saved before it"):
        run(cfg, rt=one_process())  # noticed at the log of step 4, without a host sync per step
    assert not (tmp_path / "weights.pt").exists() and not (tmp_path / "checkpoint.pt").exists()
    assert strict_json_lines(tmp_path / "metrics.jsonl") == []


def test_metrics_lines_are_strict_json(tmp_path):
    from fastfc.train import Metrics

    m = Metrics(tmp_path, True, {"train": {}})
    m.log(3, {"train/loss": float("nan"), "train/grad_norm": float("inf"), "train/lr": 1e-3})
    m.close()
    assert strict_json_lines(tmp_path / "metrics.jsonl") == [
        {"step": 3, "train/loss": None, "train/grad_norm": None, "train/lr": 1e-3}]


@pytest.mark.slow
def test_two_ranks_stop_together_on_divergence(beton63, tmp_path):
    cfg = issue_config(beton63, tmp_path / "run", lr=1e30, warmup_steps=1, max_steps=10, log_every=3)
    done = torchrun(["distill", "--config", str(write_toml(cfg, tmp_path / "cfg.toml"))])
    assert done.returncode != 0
    assert done.stderr.count("error: step 2: the loss is nan") == 2, done.stderr[-3000:]  # each rank, same step
    assert not (tmp_path / "run" / "weights.pt").exists()


# ------------------------------------------------------------------ precision

def test_fp32_has_no_autocast_anywhere_and_bf16_autocasts_teacher_and_student():
    from fastfc.distill import DistillTask, ObjectiveConfig
    from fastfc.models import build_student, build_teacher
    from fastfc.train import prepare, train_step

    images = torch.randn(4, 3, 32, 32)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        task = DistillTask(build_teacher("tiny"), build_student("tiny", seed=0), ObjectiveConfig())
        with torch.no_grad():
            expected = 0.9 * torch.nn.functional.mse_loss(task.model(images), task.teacher.visual(images))
        dtypes = []
        for module in (task.teacher.visual, task.model):
            module.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
        cfg = TrainConfig(precision=precision, compile=False, channels_last=False)
        model, optimizer = prepare(task, cfg, one_process())
        loss, grad_norm = train_step(task, model, optimizer, images, lr=1e-3, cfg=cfg)
        losses[precision] = (float(loss), float(expected))
        want = torch.float32 if precision == "fp32" else torch.bfloat16
        assert dtypes == [want, want] and torch.isfinite(grad_norm)
    assert losses["fp32"][0] == pytest.approx(losses["fp32"][1], rel=1e-6)  # the paper's arithmetic
    assert abs(losses["bf16"][0] - losses["bf16"][1]) > 1e-4 * losses["bf16"][1]  # bf16 really differs


def test_older_bf16_key_maps_to_precision(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nbf16 = false\n")
    assert configlib.load(DistillConfig, toml).train.precision == "fp32"
    assert configlib.load(DistillConfig, None, ["train.bf16=true"]).train.precision == "bf16"
    assert DistillConfig().train.precision == "bf16"
    with pytest.raises(configlib.ConfigError, match="train.bf16 = false and train.precision = 'bf16' disagree"):
        configlib.load(DistillConfig, toml, ["train.precision=bf16"])
    with pytest.raises(configlib.ConfigError, match="train.precision must be one of bf16, fp32, got 'fp16'"):
        configlib.load(DistillConfig, None, ["train.precision=fp16"])


OLDER_KEY_NOTES = ["[model] arch is now [encoder] name", "[model] student_seed is now [encoder] seed",
                   "[model] init is now [encoder] init", "[model] teacher_pretrained is now [teacher] pretrained",
                   "[model] teacher_weights is now [teacher] weights", "[data] num_workers is now [data] workers"]


def test_config_an_older_key_run_under_torchrun_says_each_new_name_once_and_trains(beton63, tmp_path):
    cfg = issue_config(beton63, tmp_path / "run", max_steps=4)
    toml = write_toml(with_older_keys(configlib.to_dict(cfg)), tmp_path / "old.toml")
    assert "[model]" in toml.read_text() and "[encoder]" not in toml.read_text()
    done = torchrun(["distill", "--config", str(toml), "--set", "model.student_seed=0"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert done.stdout.count("done: 4 steps") == 1, done.stdout
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]  # rank 0's, once each
    assert notes == [f"note: {toml}: {line}" for line in OLDER_KEY_NOTES] + [
        "note: --set model.student_seed is now encoder.seed"]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved == json.loads(json.dumps(configlib.to_dict(cfg)))  # the same config as the new names give
    assert saved["encoder"]["name"] == "tiny" and saved["data"]["workers"] == 1


def test_config_a_checkpoint_saved_with_older_keys_resumes_as_the_same_run(beton63, tmp_path, capsys):
    run(issue_config(beton63, tmp_path, stop_after=3), rt=one_process())
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    state["config"] = with_older_keys(state["config"])  # as a run started before the rename saved it
    torch.save(state, tmp_path / "checkpoint.pt")
    capsys.readouterr()
    assert run(issue_config(beton63, tmp_path), rt=one_process(), resume=True)["step"] == 16
    out = capsys.readouterr().out
    assert "comes from another run" not in out and "changed settings" not in out  # like compared with like
    run(issue_config(beton63, tmp_path / "b", stop_after=3), rt=one_process())
    state = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    state["config"] = with_older_keys(state["config"])
    state["config"]["model"]["student_seed"] = 1  # another run, in the older names
    torch.save(state, tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"comes from another run \(encoder: \{'name': 'tiny', 'seed': 1, "):
        run(issue_config(beton63, tmp_path / "b"), rt=one_process(), resume=True)
