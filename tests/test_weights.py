"""Third-party weights are checked: a checkpoint named the torchvision way (``<name>-<sha256 prefix>.pth``,
the demo teacher's ``mobilenet_v2-b0353104.pth``) must match the hash in its name, as torch.hub checks
its downloads; a mismatch is refused in one line before the file is unpickled."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from fastfc.models import CheckpointError, build_encoder, mobilenet_v2_weights_path


def test_the_packaged_teacher_is_torchvisions_checkpoint():
    path = mobilenet_v2_weights_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith("b0353104")
    assert build_encoder("mobilenet_v2", weights="package").embed_dim == 1280  # checked and loaded


def test_a_changed_byte_is_refused_by_the_name_hash(tmp_path, capsys):
    good = tmp_path / "good" / "mobilenet_v2-b0353104.pth"
    good.parent.mkdir()
    shutil.copy(mobilenet_v2_weights_path(), good)
    build_encoder("mobilenet_v2", weights=good)  # an intact copy loads
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of a tensor: torch.load would not notice
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"mobilenet_v2-b0353104\.pth: SHA-256 \w{8}\.\.\. does not match "
                                              r"the b0353104 in its name"):
        build_encoder("mobilenet_v2", weights=bad)

    from fastfc.cli import main
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "meta.json").write_text("{}")  # the encoder is built (and refused) before data is read
    assert main(["features", "--encoder", "mobilenet_v2", "--weights", str(bad), str(tmp_path / "set")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert "does not match the b0353104 in its name" in err[0] and "--force-reinstall" in err[0]
    assert len(err) == 2 and "Traceback" not in err[1]


def test_files_named_otherwise_are_not_hash_checked(tmp_path):
    plain = tmp_path / "student-2024.pt"  # digits after a dash, but not torchvision's <name>-<hex>.pth
    shutil.copy(mobilenet_v2_weights_path(), plain)
    assert build_encoder("mobilenet_v2", weights=plain).name == "mobilenet_v2"
