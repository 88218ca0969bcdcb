"""Benchmarks run in smoke mode: tiny sizes, their output fields present and sane (no speed asserted)."""

import math

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
