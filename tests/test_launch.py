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


ENV = {"NNODES": "2", "NODE_RANK": "0", "MASTER": "node0:29500", "SLURM_NNODES": "2", "SLURM_JOB_ID": "7"}


@pytest.mark.parametrize("script", ["single_node.sh", "multi_node.sh", "slurm.sbatch"])
def test_a_missing_config_is_refused_in_one_line(script, tmp_path):
    done = launch(script, "launch/configs/distill_rn99.toml", path=tool_path(tmp_path), DRY="1", **ENV)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"{script}: config launch/configs/distill_rn99.toml not found; pass one of launch/configs/*.toml (or your own TOML file)\n"


def test_an_unknown_architecture_is_refused_in_one_line_naming_the_known_ones(tmp_path):
    done = launch("probe_and_eval.sh", "RN99", path=tool_path(tmp_path), DRY="1")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("probe_and_eval.sh: unknown architecture 'RN99'; known: RN101 RN50 RN50x16 RN50x4 "
                           "ViT-B-16 (one launch/configs/distill_<arch>.toml each)\n")


@pytest.mark.parametrize("arch, key, betons", [("RN50", "rn50", "data/betons"), ("RN50x4", "rn50x4", "data/betons_320"),
                                               ("RN50x16", "rn50x16", "data/betons_427"),
                                               ("ViT-B-16", "vit_b16", "data/betons")])
def test_probe_and_eval_takes_its_run_names_and_betons_from_the_architectures_launch_config(arch, key, betons, tmp_path):
    runs = commands(launch("probe_and_eval.sh", arch, path=tool_path(tmp_path), DRY="1", NGPU="2", FAST="1"))
    assert f"--weights runs/distill_{key}/weights.pt --kind distilled --train {betons}/train.beton" in runs[1]
    assert runs[4].endswith(f"--compare runs/clip_{key} runs/student_{key} --plot runs/id_vs_ood_{key}.png")
    assert all("--nproc-per-node 2 " in line for line in runs[:4])


def test_slurm_finds_the_launchers_common_block_from_the_copy_sbatch_runs(tmp_path):
    """sbatch runs a copy of the script from its spool folder: common.sh comes from the submit folder."""
    copy = tmp_path / "spool" / "slurm_script"
    copy.parent.mkdir()
    copy.write_text((REPO / "launch/slurm.sbatch").read_text())
    done = subprocess.run(["bash", str(copy), CONFIG], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": tool_path(tmp_path), "PY": sys.executable, "DRY": "1", "SLURM_SUBMIT_DIR": str(REPO),
                               **ENV})
    (slurm,) = commands(done)
    assert "--nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id 7" in slurm


def config_value(path: str, *args: str) -> subprocess.CompletedProcess:
    """``config_value ARGS`` of launch/common.sh, run by bash as a launcher runs it (PATH: ``path``)."""
    script = 'source launch/common.sh; config_value "$@"'
    return subprocess.run(["bash", "-c", script, "probe_and_eval.sh", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PATH": path, "PY": sys.executable, "NGPU": "1"})


def test_config_value_reads_a_key_of_a_section_under_its_new_or_its_older_name(tmp_path):
    tools = tool_path(tmp_path)
    new = config_value(tools, "launch/configs/distill_rn50x4.toml", "encoder", "name")
    assert (new.returncode, new.stdout, new.stderr) == (0, "RN50x4\n", "")
    assert config_value(tools, "launch/configs/distill_rn50x4.toml", "data", "train_beton").stdout == \
        "data/betons_320/train.beton\n"
    (tmp_path / "old.toml").write_text('[model]\narch = "RN50x16"  # an older key\n[data]\nnum_workers = 3\n'
                                       '[train]\nepochs = 100\n')
    old = config_value(tools, str(tmp_path / "old.toml"), "encoder", "name")
    assert (old.returncode, old.stdout, old.stderr) == (0, "RN50x16\n", "")
    assert config_value(tools, str(tmp_path / "old.toml"), "data", "workers").stdout == "3\n"
    assert config_value(tools, str(tmp_path / "old.toml"), "train", "epochs").stdout == "100\n"
    unset = config_value(tools, str(tmp_path / "old.toml"), "teacher", "weights")
    assert (unset.returncode, unset.stdout) == (0, "")
    (tmp_path / "bad.toml").write_text("[encoder\n")
    bad = config_value(tools, str(tmp_path / "bad.toml"), "encoder", "name")
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1
    assert bad.stderr.startswith(f"probe_and_eval.sh: {tmp_path / 'bad.toml'}: ")
