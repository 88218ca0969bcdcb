"""No number from non-finite inputs (issue 23 §2): an encoder whose embeddings reach ~1e5 (finite in
float32) never fills a float16 cache with inf, a probe with non-finite weights is never saved, eval
refuses a non-finite head, an older cache holding inf is rebuilt, and an encoder giving NaN is refused.
Real ffcv betons, the real tiny encoder, the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fastfc.cli import main
from fastfc.features import extract
from fastfc.models import build_student
from fastfc.probe import save_probe
from fastfc.checkpoint import Diverged


def one_error_line(capsys) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines()
             if l.strip() and "%|" not in l and not l.startswith("fastfc: warning")]  # no bars, no notes
    assert len(lines) == 2 and "FASTFC_TRACEBACK" in lines[1], lines
    return lines[0]


def scaled_weights(tmp_path: Path, scale: float, nan: bool = False) -> Path:
    """The seeded tiny student with its projection scaled by ``scale`` (embeddings up to ~1.1e5 at 3e5)."""
    encoder = build_student("tiny", seed=0)
    with torch.no_grad():
        encoder.visual.proj.weight.mul_(scale), encoder.visual.proj.bias.mul_(scale)
        if nan:
            encoder.visual.proj.bias[3] = float("nan")
    path = tmp_path / f"tiny_x{scale:g}{'_nan' if nan else ''}.pt"
    torch.save(encoder.visual.state_dict(), path)
    return path


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.rglob("*") if p.name.startswith("."))


def test_large_embeddings_are_refused_for_float16_and_probe_well_in_float32(small_beton, tmp_path, capsys):
    weights, cache = scaled_weights(tmp_path, 3e5), tmp_path / "cache"
    common = ["--encoder", "tiny", "--weights", str(weights), "--cache", str(cache), "--workers", "1"]
    assert main(["features", *common, str(small_beton)]) == 1  # the default precision: a float16 cache
    line = one_error_line(capsys)
    assert f"{small_beton}: embeddings reach |x| = " in line and "beyond the float16 cache's range (65504)" in line
    peak = float(line.split("|x| = ")[1].split(",")[0])
    assert 65504 < peak < 1e6
    assert not list(cache.rglob("features.npy")) and leftovers(cache) == []  # nothing cached, no temporary
    recipe = ["--epochs", "20", "--batch-size", "32", "--warmup", "2", "--lr", "1e-2"]
    assert main(["probe", *common, "--precision", "fp32", "--train", str(small_beton), *recipe,
                 "--out", str(tmp_path / "p" / "probe.pt")]) == 0
    (cached,) = cache.rglob("features.npy")
    feats = np.load(cached)
    assert feats.dtype == np.float32 and np.isfinite(feats).all()
    assert np.abs(feats).max() == pytest.approx(peak, rel=1e-3)
    info = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert info["train_top1"] > 0.5  # 0.80 measured; 10 classes: chance 0.1; NaN weights score 0.1


def test_a_probe_with_nonfinite_weights_is_never_saved_and_eval_refuses_one(converted, tmp_path, capsys):
    out, meta = converted
    weight, bias = torch.zeros(10, 32), torch.zeros(10)
    weight[2, 5] = float("nan")
    with pytest.raises(Diverged, match=r"probe\.pt: the trained probe has 1 non-finite weights"):
        save_probe(tmp_path / "probe.pt", weight, bias, {})
    assert list(tmp_path.iterdir()) == []
    torch.save({"weight": weight, "bias": bias}, tmp_path / "old.pt")  # written by an older fastfc
    assert main(["eval", "--encoder", "tiny", "--probe", str(tmp_path / "old.pt"), "--val-beton",
                 str(out / "val.beton"), "--cache", str(tmp_path / "c"), "--out", str(tmp_path / "run")]) == 1
    line = one_error_line(capsys)
    assert f"{tmp_path / 'old.pt'}: the probe's weights are not finite" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "c").exists()  # refused before any work


def test_an_older_cache_holding_inf_is_rebuilt(small_beton, tmp_path, capsys):
    encoder = build_student("tiny", seed=0)
    first = extract(encoder, small_beton, tmp_path, num_workers=1)
    clean = np.array(first.features)
    path = first.path / "features.npy"
    damaged = np.load(path)
    damaged[7, :4] = np.inf  # what a float16 overflow left in an older fastfc's cache
    np.save(path, damaged)
    again = extract(encoder, small_beton, tmp_path, num_workers=1)
    assert f"{path}: row 7 is not finite; extracting again" in capsys.readouterr().out
    assert np.isfinite(again.features).all() and np.array_equal(again.features, clean)


def test_nan_from_the_encoder_itself_is_refused(small_beton, tmp_path, capsys):
    weights, cache = scaled_weights(tmp_path, 1.0, nan=True), tmp_path / "cache"
    assert main(["features", "--encoder", "tiny", "--weights", str(weights), "--cache", str(cache), "--workers",
                 "1", "--precision", "fp32", str(small_beton)]) == 1
    line = one_error_line(capsys)
    assert f"{small_beton}: the encoder gave non-finite (NaN/inf) embeddings for 300 of 300 images" in line
    assert not list(cache.rglob("features.npy")) and leftovers(cache) == []
