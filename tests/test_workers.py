"""Worker defaults fit the CPUs the process may use (os.sched_getaffinity), checked under
``taskset -c 0``: one usable CPU. ffcv sets numba's thread count to its workers, and numba refuses
more threads than usable CPUs, so a default of 4 or 8 used to fail there."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_prep.shifts import list_set, write_set

from .test_shift_sets import IMAGENET, make_ra

pytestmark = pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
REPO = Path(__file__).resolve().parents[1]


def on_one_cpu(*argv: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["taskset", "-c", "0", sys.executable, *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def warnings(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.splitlines() if "warning" in line]


def test_defaults_and_explicit_counts_follow_the_affinity_mask():
    code = ("from fastfc.cpus import default_workers, fit_workers, usable_cpus; "
            "print(usable_cpus(), default_workers(), fit_workers(None), fit_workers(0), fit_workers(1), fit_workers(5))")
    done = on_one_cpu("-c", code)
    assert done.stdout.split() == ["1", "1", "1", "0", "1", "1"]
    assert warnings(done) == ["fastfc: warning: --workers 5 is more than the 1 CPU(s) this process may use "
                              "(os.sched_getaffinity); using 1"]
    shared = subprocess.run([sys.executable, "-c", "from fastfc.cpus import default_workers; print(default_workers())"],
                            capture_output=True, text=True, env={**os.environ, "LOCAL_WORLD_SIZE": "64"})
    assert shared.stdout.split() == ["1"]  # 64 torchrun ranks share the node's CPUs: at least one worker each


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("r")
    src = make_ra(root / "imagenet-r")
    write_set(list_set("imagenet-r", src, IMAGENET), src, root / "shards", workers=1)
    return root / "shards" / "imagenet-r"


def test_features_lowers_more_workers_than_cpus_with_one_warning(small_beton, shard_set, tmp_path):
    """`fastfc features` over a beton (ffcv's numba threads) and a shard set (DataLoader processes)."""
    done = on_one_cpu("-m", "fastfc", "features", "--encoder", "tiny", "--cache", str(tmp_path / "cache"),
                      "--batch-size", "64", "--workers", "4", str(small_beton), str(shard_set))
    assert done.returncode == 0, done.stderr[-2000:]  # the old default of 4 failed: "number of threads ... 1 and 1"
    assert "300 x 32 float16" in done.stdout and "5 x 32 float16" in done.stdout
    random_init, lowered = warnings(done)  # no weights given: said once, then the worker count
    assert random_init.startswith("fastfc: warning: no --pretrained or --weights: tiny is a random-init encoder")
    assert lowered == ("fastfc: warning: --workers 4 is more than the 1 CPU(s) this process may use "
                       "(os.sched_getaffinity); using 1")


def test_distill_default_loader_workers_run_on_one_cpu(small_beton, tmp_path):
    """The default data.workers (8 before) through ffcv's Loader; the worker default of every
    command is the same fastfc.cpus.default_workers."""
    sets = ["encoder.name=tiny", "teacher.pretrained=", f"data.train_beton={small_beton}", "data.augment=false",
            "train.global_batch_size=32", "train.max_steps=2", "train.warmup_steps=1", f"train.out_dir={tmp_path}"]
    done = on_one_cpu("-m", "fastfc", "distill", *[a for s in sets for a in ("--set", s)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "config.json").read_text())["data"]["workers"] is None
    assert warnings(done) == []


def test_converter_lowers_an_explicit_worker_count(tmp_path):
    src = make_ra(tmp_path / "imagenet-r")
    done = on_one_cpu("-m", "data_prep.shifts", "--set", "imagenet-r", "--src", str(src), "--out",
                      str(tmp_path / "out"), "--workers", "3", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert warnings(done) == ["fastfc: warning: --workers 3 is more than the 1 CPU(s) this process may use "
                              "(os.sched_getaffinity); using 1"]
    assert json.loads((tmp_path / "out" / "imagenet-r" / "meta.json").read_text())["count"] == 5
