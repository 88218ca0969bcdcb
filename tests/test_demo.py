"""The demo: its data step matches the real datasets' layouts, and a reduced demo runs every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.shifts import list_set, read_imagenet_classes
from fastfc.demo import SHIFT_DIRS, make_shift_sets, run
from fastfc.photos import IMAGENETTE_WNIDS

IMAGENET = read_imagenet_classes()


def test_shift_like_sets_use_the_real_layouts_and_label_rules(tmp_path):
    sets = make_shift_sets(tmp_path, per_class=2)
    v2 = list_set("imagenet-v2", sets["imagenet-v2"], IMAGENET)
    folders = sorted(p.name for p in sets["imagenet-v2"].iterdir())
    assert all(f.isdigit() for f in folders)  # integer folders, label = int(folder)
    assert sorted(set(v2.labels)) == sorted(IMAGENET.index(w) for w in IMAGENETTE_WNIDS)
    for name in ("imagenet-r", "imagenet-a"):
        listing = list_set(name, sets[name], IMAGENET)
        assert listing.classes == sorted(IMAGENETTE_WNIDS) and len(listing.files) == 20
    assert any("." in Path(f).stem for f in list_set("imagenet-a", sets["imagenet-a"], IMAGENET).files)
    objectnet = list_set("objectnet", sets["objectnet"], IMAGENET)  # the real mapping-file code path
    assert len(objectnet.classes) == 10 and objectnet.dropped == {"air_freshener": 2}
    assert sorted(i for ix in objectnet.imagenet_indices for i in ix) == sorted(IMAGENET.index(w) for w in IMAGENETTE_WNIDS)
    assert list_set("imagenet-sketch", sets["imagenet-sketch"], IMAGENET).classes == IMAGENET


@pytest.mark.slow
def test_reduced_demo_runs_every_stage_with_exact_counts(tmp_path):
    table = run(tmp_path, distill_steps=3, train_per_class=4, val_per_class=2, shift_per_class=2)
    summary = json.loads((tmp_path / "distill" / "summary.json").read_text())
    assert summary["step"] == 3 and len(summary["replica_checksums"]) == 2  # torchrun, 2 ranks
    assert summary["replica_checksums"][0] == summary["replica_checksums"][1]
    for run_name in ("teacher", "student"):
        results = json.loads((tmp_path / run_name / "results.json").read_text())["sets"]
        assert set(results) == {"imagenet-val", *SHIFT_DIRS}
        assert results["imagenet-val"]["n"] == 20
        for name in SHIFT_DIRS:
            meta = json.loads((tmp_path / "data" / "shards" / name / "meta.json").read_text())
            assert results[name]["n"] == meta["count"] == 20, name
    assert table.splitlines()[2].startswith("| teacher |") and (tmp_path / "id_vs_ood.png").is_file()
    teacher = json.loads((tmp_path / "teacher" / "results.json").read_text())["sets"]
    assert teacher["imagenet-val"]["top1"] > 0.5  # real ImageNet weights on real photographs
