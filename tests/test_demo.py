"""`make demo`'s command, on a fresh run folder, then again reusing the prepared data."""

import json

from fastfc.cli import main


def test_demo_builds_converts_verifies_and_reuses(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    meta = json.loads((tmp_path / "data" / "betons" / "meta.json").read_text())
    assert meta["splits"]["train"]["count"] == 300 and meta["splits"]["val"]["count"] == 100
    first = capsys.readouterr().out
    assert "train.beton: 300 images, labels match the source" in first
    stamp = (tmp_path / "data" / "betons" / "train.beton").stat().st_mtime_ns
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (tmp_path / "data" / "betons" / "train.beton").stat().st_mtime_ns == stamp
