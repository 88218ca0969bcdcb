"""The launchers themselves, run by bash on a CPU-only machine: no GPU, and no nvidia-smi on PATH or
one that fails (a machine without the driver). Every dry run must work there."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = "launch/configs/distill_rn50.toml"
TOOLS = ("bash", "cat", "dirname", "grep", "head", "sed", "tr", "wc")


def tool_path(tmp_path: Path, nvidia_smi: str = "absent") -> str:
    """A PATH holding only the tools the launchers use: no nvidia-smi, or one that fails as it does
    on a machine without the NVIDIA driver."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if nvidia_smi == "failing":
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it couldn't "
                                            "communicate with the NVIDIA driver.' >&2\nexit 9\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    return str(bin_dir)


@pytest.fixture(params=["absent", "failing"])
def cpu_path(request, tmp_path) -> str:
    return tool_path(tmp_path, request.param)


def launch(script: str, *args: str, path: str, timeout: int = 60, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("NGPU", "DRY", "MASTER") and not k.startswith("SLURM")}
    return subprocess.run(["bash", f"launch/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**base, "PATH": path, "PY": sys.executable, **env})


def commands(done: subprocess.CompletedProcess) -> list[str]:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return [line for line in done.stdout.splitlines() if line.startswith("+ ")]


def test_dry_runs_print_one_process_commands(cpu_path):
    (single,) = commands(launch("single_node.sh", CONFIG, "--set", "train.lr=1e-4", path=cpu_path, DRY="1"))
    assert "--standalone --nproc-per-node 1 -m fastfc distill --config " + CONFIG + " --set train.lr=1e-4" in single
    (multi,) = commands(launch("multi_node.sh", CONFIG, path=cpu_path, DRY="1", NNODES="2", NODE_RANK="1",
                               MASTER="node0:29500"))
    assert "--nnodes 2 --node-rank 1 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint node0:29500" in multi
    runs = commands(launch("probe_and_eval.sh", "RN50", path=cpu_path, DRY="1"))
    assert len(runs) == 5 and all("--nproc-per-node 1 " in line for line in runs[:4])
    (slurm,) = commands(launch("slurm.sbatch", CONFIG, path=cpu_path, DRY="1", SLURM_NNODES="4", SLURM_JOB_ID="7",
                               SLURM_RESTART_COUNT="1", MASTER="node0:29500"))
    assert slurm.startswith("+ srun --kill-on-bad-exit=1 ") and "--nnodes 4 --nproc-per-node 8" in slurm
    assert slurm.endswith(f"--config {CONFIG} --resume")  # a requeued job resumes


def test_single_node_dry_run_of_the_distillation_plan_runs_on_cpu(tmp_path):
    done = launch("single_node.sh", CONFIG, "--dry-run", path=tool_path(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = json.loads(done.stdout[done.stdout.index("{"):])["plan"]
    assert plan["world_size"] == 1 and plan["per_rank_batch"] == 256


@pytest.mark.slow
def test_multi_node_dry_run_rendezvous_on_cpu(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = launch("multi_node.sh", CONFIG, "--dry-run", path=tool_path(tmp_path), timeout=300, NNODES="1", NODE_RANK="0",
                  MASTER=f"127.0.0.1:{port}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout[done.stdout.index("{"):])["plan"]["world_size"] == 1
