"""Every way a run is relaunched continues it or refuses in one line; none silently starts over
(issue 23 §1). Real torchrun (gloo), a tiny distillation of 10 steps checkpointed every 2, stopped
at step 4; metrics.jsonl must then hold each step exactly once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fastfc.checkpoint import CheckpointError, load_checkpoint
from fastfc.distill import run
from fastfc.runtime import Runtime

from .test_train import REPO, issue_config, metrics, torchrun, write_toml

STEPS = list(range(1, 11))


def config(beton: Path, out: Path, **train):
    """10 steps of 8 images, a checkpoint every 2 steps, a metrics line every step."""
    return issue_config(beton, out, max_steps=10, checkpoint_every=2, **train)


@pytest.fixture(scope="module")
def stopped(beton63, tmp_path_factory) -> Path:
    """The run stopped at step 4 by one process: checkpoint.pt (step 4), checkpoint.prev.pt (step 2)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    assert run(config(beton63, out, stop_after=4), rt=Runtime())["step"] == 4
    return out


def copy(stopped: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(stopped, tmp_path / "run"))


def steps(out: Path) -> list[int]:
    return [m["step"] for m in metrics(out)]


def snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.mark.slow  # torchrun x3 / x2 workers twice: ~100-160 s on a busy 2-core machine
def test_torchrun_same_command_is_refused_then_resume_continues(beton63, tmp_path):
    out = tmp_path / "run"
    toml = write_toml(config(beton63, out), tmp_path / "cfg.toml")
    first = torchrun(["distill", "--config", str(toml), "--set", "train.stop_after=4"])
    assert first.returncode == 0 and first.stdout.count("stopped at step 4") == 1, first.stderr[-3000:]
    before = snapshot(out)
    again = torchrun(["distill", "--config", str(toml)])  # the same command, both ranks must refuse
    assert again.returncode == 1
    said = [l for l in again.stderr.splitlines() if "holds this run's progress" in l]
    assert len(said) == 2 and f"{out / 'checkpoint.pt'} holds this run's progress (step 4)" in said[0]
    assert "continue it with --resume, or start over with --fresh" in said[0]
    assert snapshot(out) == before  # nothing touched: checkpoint at step 4, prev at 2, metrics 1..4
    done = torchrun(["distill", "--config", str(toml), "--resume"])
    assert done.returncode == 0 and done.stdout.count("done: 10 steps") == 1, done.stderr[-3000:]
    assert steps(out) == STEPS
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 10


def test_same_command_in_process_is_refused_in_one_line(stopped, beton63, tmp_path):
    out = copy(stopped, tmp_path)
    before = snapshot(out)
    with pytest.raises(CheckpointError) as e:
        run(config(beton63, out), rt=Runtime())
    assert "\n" not in str(e.value) and "(step 4)" in str(e.value) and snapshot(out) == before


def test_fresh_moves_the_old_run_aside_and_starts_over(stopped, beton63, tmp_path, capsys):
    out = copy(stopped, tmp_path)
    before = snapshot(out)
    assert run(config(beton63, out), rt=Runtime(), fresh=True)["step"] == 10
    (aside,) = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert snapshot(aside) == before  # every file of the old run, unchanged
    assert f"moved the previous run (checkpoint.prev.pt, checkpoint.pt, config.json, metrics.jsonl" in \
        capsys.readouterr().out
    assert steps(out) == STEPS and steps(aside) == [1, 2, 3, 4]


@pytest.mark.parametrize("env", ["TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"])
def test_a_restart_or_requeue_resumes_without_flags(stopped, beton63, tmp_path, monkeypatch, capsys, env):
    out = copy(stopped, tmp_path)
    with (out / "metrics.jsonl").open("a") as f:  # logged after the checkpoint, then the crash cut a line
        f.write('{"step": 5, "train/loss": 1.0}\n{"step": 6, "train/lo')
    monkeypatch.setenv(env, "1")
    summary = run(config(beton63, out), rt=Runtime(), fresh=True)  # the relaunched command may hold --fresh
    assert summary["step"] == 10 and not summary["stopped_early"]
    said = capsys.readouterr().out
    assert "--fresh applies to the first launch only" in said and "dropped 2 line(s) logged after step 4" in said
    assert steps(out) == STEPS and not any(p.name.startswith("replaced-") for p in out.iterdir())


@pytest.mark.parametrize("how", ["resume", "SLURM_RESTART_COUNT"])
def test_relaunch_before_the_first_checkpoint_starts_the_run(stopped, beton63, tmp_path, monkeypatch, capsys, how):
    out = tmp_path / "run"  # a run that logged steps 1..4 and died before any checkpoint
    out.mkdir()
    shutil.copy(stopped / "metrics.jsonl", out)
    if how != "resume":
        monkeypatch.setenv(how, "2")
    assert run(config(beton63, out), rt=Runtime(), resume=how == "resume")["step"] == 10
    said = capsys.readouterr().out
    assert f"no checkpoint in {out} yet; starting the run" in said and "dropped 4 line(s)" in said
    assert steps(out) == STEPS


@pytest.mark.slow  # torchrun x3 / x2 workers twice: ~100-160 s on a busy 2-core machine
def test_torchrun_max_restarts_continues_after_a_rank_dies(beton63, tmp_path):
    """Rank 1 dies once after the step-4 save; every restart resumes. --max-restarts 3, not 1: a
    restart's own gloo set-up fails now and then on this torch (an abort in the restarted workers,
    about 1 in 6 runs here), and each further restart must continue the run just the same."""
    out = tmp_path / "run"
    toml = write_toml(config(beton63, out), tmp_path / "cfg.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "--max-restarts", "3", str(REPO / "tests" / "die_once.py"), "distill", "--config",
                           str(toml)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done: 10 steps") == 1 and "torchrun restart 1" not in done.stdout
    assert steps(out) == STEPS  # resumed at step 4: nothing logged twice, nothing missing
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 10 and len(set(summary["replica_checksums"])) == 1
