"""Benchmarks run in smoke mode: tiny sizes, their output fields present and sane (no speed asserted)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import convert


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_convert_benchmark_smoke():
    line = convert.run(per_class=3, repeats=1, workers=1, history=False)
    f = line["figures"]
    assert f["images"] == 30 + 0  # 10 classes x 3
    for key in ("scan_img_per_s", "write_img_per_s", "convert_img_per_s", "convert_img_per_s_per_core",
                "source_mb", "beton_mb"):
        assert _finite_positive(f[key]), key
    assert f["convert_img_per_s"] < f["write_img_per_s"]  # the whole includes the scan
    assert line["machine"]["cores"] >= 1 and line["sha"]
    assert _finite_positive(line["ratios"]["beton_vs_source_size"])


def test_shards_benchmark_smoke():
    from benchmarks import shards

    line = shards.run(per_class=2, repeats=1, workers=1, batch_size=8, resolution=32, history=False)
    f = line["figures"]
    assert f["images"] == 20
    assert _finite_positive(f["shards_img_per_s"]) and _finite_positive(f["imagefolder_img_per_s"])
    assert _finite_positive(line["ratios"]["shards_vs_imagefolder"])


def test_step_benchmark_smoke():
    from benchmarks import step

    line = step.run(arch="tiny", batch=4, resolution=None, steps=2, repeats=1, warmup=1, device="cpu",
                    rows=step.ROWS[:2], history=False)
    rows = line["figures"]["rows"]
    assert list(rows) == ["eager fp32 NCHW", "+ channels_last"]
    assert all(_finite_positive(r["img_per_s"]) for r in rows.values())
    assert line["ratios"]["vs_eager_fp32"]["eager fp32 NCHW"] == 1.0
    assert rows["eager fp32 NCHW"]["mfu"] is None  # no MFU without a known peak (CPU)


def test_probe_benchmark_smoke():
    from benchmarks import probe

    line = probe.run(per_class=3, epochs=2, workers=1, batch_size=8, history=False)
    f = line["figures"]
    assert f["images"] == 30 and f["epochs"] == 2
    assert _finite_positive(f["cached_s"]) and _finite_positive(f["images_s"])
    assert 0 <= f["train_top1_cached"] <= 1 and 0 <= f["train_top1_images"] <= 1
    assert _finite_positive(line["ratios"]["cached_vs_images"])


def test_loader_benchmark_smoke():
    from benchmarks import loader

    line = loader.run(per_class=4, repeats=1, workers=1, batch_size=8, resolution=64, history=False)
    f = line["figures"]
    assert f["images"] == 40
    for key in ("ffcv_img_per_s", "ffcv_fp16_img_per_s", "imagefolder_img_per_s", "decode_bound_img_per_s"):
        assert _finite_positive(f[key]), key
    assert line["ratios"]["beton_vs_source_size"] > 1  # raw-stored images are bigger than JPEGs


def test_plot_draws_one_png_per_benchmark(tmp_path):
    import json

    from benchmarks import plot

    history = tmp_path / "history.jsonl"
    lines = [{"benchmark": "step", "sha": "abc", "date": "2026-11-29T00:00:00", "machine": {"cpu": "x", "gpu": None},
              "figures": {}, "ratios": {"vs_eager_fp32": {"+ bf16": 1.5}}},
             {"benchmark": "loader", "sha": "def", "date": "2026-11-29T01:00:00", "machine": {"cpu": "x", "gpu": None},
              "figures": {}, "ratios": {"ffcv_vs_imagefolder": 2.8}}]
    history.write_text("".join(json.dumps(l) + "\n" for l in lines))
    paths = plot.plot(history, tmp_path)
    assert sorted(p.name for p in paths) == ["loader.png", "step.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_summary_judges_the_newest_line_and_gpu_targets_only_on_gpu_lines(tmp_path, capsys):
    import json

    from benchmarks import summary

    def line(benchmark, sha, figures=None, **ratios):
        return {"benchmark": benchmark, "sha": sha, "date": "2026-11-29T00:00:00", "machine": {},
                "figures": figures or {}, "ratios": ratios}

    def step(device, arch, rate, ratio):
        rows = {"eager fp32 NCHW": {"img_per_s": rate / ratio}, "+ fused AdamW": {"img_per_s": rate}}
        return line("step", device, {"device": device, "arch": arch, "rows": rows},
                    vs_eager_fp32={"eager fp32 NCHW": 1.0, "+ fused AdamW": ratio})

    history = tmp_path / "history.jsonl"
    lines = [line("loader", "old", ffcv_vs_imagefolder=2.5, ffcv_vs_decode_bound=0.5),
             line("loader", "new", ffcv_vs_imagefolder=3.5, ffcv_vs_decode_bound=0.7),
             step("cuda", "RN50", 6000.0, 3.2), step("cpu", "tiny", 900.0, 0.2)]
    history.write_text("".join(json.dumps(l) + "\n" for l in lines))
    rows = {r["measure"]: r for r in summary.summarise(summary.read_history(history))}
    assert rows["fastfc loader vs ImageFolder"]["status"] == "met" and rows["fastfc loader vs ImageFolder"]["sha"] == "new"
    assert rows["fastfc loader vs decode bound"]["status"] == "missed"
    assert rows["RN50 step on one GPU"]["value"] == "6000.00 img/s" and rows["RN50 step on one GPU"]["status"] == "met"
    assert rows["RN50 step, all toggles vs eager fp32"]["sha"] == "cuda"  # the newer CPU line is not judged on it
    assert rows["data wait"]["status"] == "not run yet"
    assert summary.main(["--history", str(history)]) == 0
    assert "needs a GPU run" not in capsys.readouterr().out
    assert summary.main(["--history", str(tmp_path / "none.jsonl")]) == 1
    assert "run `make bench` first" in capsys.readouterr().err


def test_probe_heads_benchmark_on_random_features_smoke():
    from benchmarks import probe

    line = probe.run_random(n=1024, dim=32, classes=10, heads=3, device="cpu", history=False)
    assert _finite_positive(line["figures"]["one_head_samples_per_s"])
    assert _finite_positive(line["ratios"]["sweep_time_per_head_vs_one_head"])


GPU_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"


def _gpu_script(tmp_path, python: str, **env) -> tuple[subprocess.CompletedProcess, str, Path]:
    out = tmp_path / "out"
    env = {**os.environ, "PY": python, "OUT": str(out), "TMPDIR": str(tmp_path), **env}
    done = subprocess.run(["bash", str(GPU_SCRIPT), "--cpu"], capture_output=True, text=True, env=env, timeout=900)
    return done, (out / "table.md").read_text(), out


@pytest.mark.slow
def test_gpu_script_cpu_twin_runs_every_step_of_the_device_call(tmp_path):
    """benchmarks/gpu.sh --cpu: the device call's steps, the same commands (data_prep, torchrun distill,
    SIGTERM + --resume, the loader on the beton, features/probe/eval) on CPU at tiny sizes."""
    done, table, out = _gpu_script(tmp_path, sys.executable)
    assert done.returncode == 0, table + done.stdout[-4000:]
    assert table.count("| ok |") == 7 and "FAILED" not in table
    lines = {line["benchmark"]: line for line in map(json.loads, (out / "history.jsonl").read_text().splitlines())}
    run = lines["distill_run"]["figures"]
    assert run["resume_ok"] and run["stopped_at"] >= 24  # SIGTERM came at step 24 or later ...
    assert run["stopped_at"] < run["resumed_first_step"] <= run["stopped_at"] + 4  # ... and the resume went on
    assert run["steps"] == run["stopped_at"] + 24 and 0 < run["loss_last"] < run["loss_first"]
    assert lines["loader_beton"]["figures"]["ffcv_img_per_s"] > 0 and lines["loader_beton"]["machine"]["cores"] >= 1
    assert (out / "gpu.log").read_text().count("=== STEP") == 7


def test_gpu_script_reports_each_failed_step_and_runs_the_rest(tmp_path):
    """A step that fails says why and the later steps still run; the exit code says something failed."""
    # Every Python command fails at once; step 0 (the bundle check) is skipped: no Python 3.12 there.
    done, table, _ = _gpu_script(tmp_path, "/bin/false", GPU_CHECK_VENV=str(tmp_path / "none"))
    assert subprocess.run(["bash", "-n", str(GPU_SCRIPT)]).returncode == 0
    assert done.returncode == 1
    assert "STEP 1 FAILED: benchmarks.step --smoke failed" in done.stdout
    assert "STEP 3 FAILED: no stopped run to resume (step 2 failed)" in done.stdout
    assert [row.split(" | ")[2] for row in table.splitlines()[2:9]] == ["ok"] + 6 * ["**FAILED**"]


def test_benchmarks_are_discovered_from_their_own_files():
    """Each benchmark declares its targets and its make-bench entry in its own file."""
    from benchmarks.common import discover
    from benchmarks.summary import targets

    found = discover()
    assert set(found) == {"cli", "convert", "e2e", "loader", "probe", "shards", "step"}
    assert {name: m.MAKE_BENCH for name, m in found.items()}["probe"] == ["--encoder", "mobilenet_v2"]
    assert sorted({t.benchmark for t in targets()}) == ["cli", "convert", "e2e", "loader", "probe", "shards", "step"]


def test_e2e_benchmark_smoke():
    from benchmarks import e2e

    line = e2e.run(per_class=4, steps=6, batch=8, workers=1, history=False)
    f = line["figures"]
    assert _finite_positive(f["loader_img_per_s"]) and _finite_positive(f["synthetic_img_per_s"])
    assert 0 <= f["data_wait"] <= 1


def test_cli_benchmark_smoke():
    from benchmarks import cli

    line = cli.run(repeats=1, baseline=False, history=False)
    seconds = line["figures"]["seconds"]
    assert set(seconds) == set(cli.COMMANDS) and all(_finite_positive(t) for t in seconds.values())
    assert line["figures"]["slowest_s"] == max(seconds.values())
