"""Checkpoints: every file a run writes loads with weights_only=True, a mid-run checkpoint serves as
--weights, a damaged or foreign checkpoint is used through its predecessor or refused in one line."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fastfc.checkpoint import CheckpointError, load_checkpoint, read_file
from fastfc.cli import main
from fastfc.distill import build_task, run
from fastfc.features import extract
from fastfc.models import build_encoder, build_teacher, load_weights
from fastfc.probe import load_probe
from fastfc.runtime import Runtime
from fastfc.train import lr_at

from .test_train import issue_config, metrics


@pytest.fixture(scope="module")
def stopped_run(beton63, tmp_path_factory) -> Path:
    """A run of the 14-step schedule stopped at step 4, checkpointing every 2 steps: checkpoint.pt
    (step 4) and checkpoint.prev.pt (step 2), no weights.pt. Tests copy it before changing it."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    summary = run(issue_config(beton63, out, stop_after=4, checkpoint_every=2), rt=Runtime())
    assert summary["stopped_early"] and summary["step"] == 4
    return out


def copy_run(stopped_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(stopped_run, tmp_path / "run"))


def one_error_line(capsys) -> str:
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(lines) == 2 and "FASTFC_TRACEBACK" in lines[1], lines  # the error, and how to see the traceback
    return lines[0]


def test_mid_run_checkpoint_serves_as_weights_for_features(stopped_run, beton63, tmp_path, capsys):
    assert not (stopped_run / "weights.pt").exists()
    checkpoint = stopped_run / "checkpoint.pt"
    assert main(["features", "--encoder", "tiny", "--weights", str(checkpoint), "--cache", str(tmp_path / "a"),
                 "--workers", "1", str(beton63)]) == 0
    assert "63 x 32" in capsys.readouterr().out
    encoder = build_teacher("tiny")
    load_weights(encoder.visual, torch.load(checkpoint, weights_only=True)["model"])
    ours = extract(encoder, beton63, tmp_path / "a", num_workers=1)  # the cache the command wrote, if same weights
    assert ours.path.parent == tmp_path / "a" and len(list((tmp_path / "a").iterdir())) == 1
    fresh = extract(build_teacher("tiny"), beton63, tmp_path / "b", num_workers=1)
    assert not np.array_equal(ours.features, fresh.features)  # the checkpoint's weights, not an init


def test_every_file_a_run_writes_loads_weights_only_and_is_finite(beton63, tmp_path):
    out = tmp_path / "run"
    run(issue_config(beton63, out, checkpoint_every=3, keep_weights_every_epochs=1), rt=Runtime())
    files = sorted(p.name for p in out.glob("*.pt"))
    assert files == ["checkpoint.prev.pt", "checkpoint.pt", "weights.pt", "weights_epoch001.pt", "weights_epoch002.pt"]
    for name in files:
        state = torch.load(out / name, weights_only=True)
        tensors = state["model"] if "model" in state else state
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()), name
    # saves at steps 3, 6, 8 (epoch end), 9, 12, 15, 16: the previous one is kept until the next is verified
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 16
    assert load_checkpoint(out / "checkpoint.prev.pt")["step"] == 15
    assert not list(out.glob(".*tmp*"))  # no temporary left behind


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "missing"])
def test_resume_falls_back_to_the_previous_checkpoint_and_says_so(stopped_run, beton63, tmp_path, capsys, damage):
    out = copy_run(stopped_run, tmp_path)
    latest = out / "checkpoint.pt"
    data = latest.read_bytes()
    if damage == "missing":  # a crash between moving checkpoint.pt aside and renaming the new one
        latest.unlink()
        (out / ".checkpoint.pt.tmp-99999").write_bytes(data[: len(data) // 3])
    else:
        latest.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00junk" * 50}[damage])
    summary = run(issue_config(beton63, out, stop_after=6, checkpoint_every=2), rt=Runtime(), resume=True)
    assert summary["step"] == 6
    said = capsys.readouterr().out
    assert f"resuming from {out / 'checkpoint.prev.pt'} (step 2) instead" in said
    lrs = {m["step"]: m["train/lr"] for m in metrics(out)}
    assert all(abs(lrs[s] - lr_at(s - 1, base=1e-3, warmup=2, total=16)) <= 1e-12 for s in (3, 4, 5, 6))
    # the damaged file never became the "previous" one: both are good checkpoints of this run
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 6
    assert load_checkpoint(out / "checkpoint.prev.pt")["step"] == 4


def test_unusable_checkpoints_are_refused_in_one_line(stopped_run, beton63, tmp_path, capsys):
    out = copy_run(stopped_run, tmp_path)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (out / name).write_bytes((out / name).read_bytes()[:1000])
    with pytest.raises(CheckpointError) as e:
        run(issue_config(beton63, out), rt=Runtime(), resume=True)
    message = str(e.value)
    assert "\n" not in message and "checkpoint.pt: cannot be read: cut short" in message
    assert "checkpoint.prev.pt: cannot be read" in message
    assert message.endswith("start over with --fresh (moves the old run aside)")

    out = copy_run(stopped_run, tmp_path / "b")  # a bare state_dict under the checkpoint's name
    torch.save(build_task(issue_config(beton63, out)).model.state_dict(), out / "checkpoint.pt")
    (out / "checkpoint.prev.pt").unlink()
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: not a fastfc training checkpoint \(no model, optim"):
        run(issue_config(beton63, out), rt=Runtime(), resume=True)

    out = copy_run(stopped_run, tmp_path / "c")  # readable, but its tensors do not fit the student
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["model"]["conv1.weight"] = state["model"]["conv1.weight"][:1]
    torch.save(state, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: does not fit .* \(size mismatch for conv1\.weight") as e:
        run(issue_config(beton63, out), rt=Runtime(), resume=True)
    assert "\n" not in str(e.value)

    cut = tmp_path / "cut.pt"
    cut.write_bytes((stopped_run / "checkpoint.pt").read_bytes()[:4000])
    assert main(["features", "--encoder", "tiny", "--weights", str(cut), "--cache", str(tmp_path / "c"),
                 str(beton63)]) == 1
    line = one_error_line(capsys)
    assert f"{cut}: cannot be read: cut short or damaged" in line and "checkpoint.prev.pt" in line
    with pytest.raises(CheckpointError, match=rf"{cut.name}: cannot be read: .*train the probe again"):
        load_probe(cut)


def test_a_checkpoint_of_an_older_fastfc_with_numpy_rng_state_still_loads(stopped_run, beton63, tmp_path):
    state = load_checkpoint(stopped_run / "checkpoint.pt")
    state["rng"] = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    del state["plan"]
    old = tmp_path / "run" / "checkpoint.pt"
    old.parent.mkdir()
    torch.save(state, old)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(old, weights_only=True)  # what older fastfc files need: numpy arrays
    assert read_file(old)["step"] == 4
    encoder = build_encoder("tiny", weights=old)
    assert torch.equal(encoder.visual.state_dict()["conv1.weight"], state["model"]["conv1.weight"])
    summary = run(issue_config(beton63, old.parent, stop_after=5), rt=Runtime(), resume=True)
    assert summary["step"] == 5
