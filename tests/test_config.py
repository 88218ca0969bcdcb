"""One config vocabulary (fastfc/config.py): the older key names of every command still load, each
with one note naming its new name, to exactly the config of the new names; an older and a new key
that disagree are refused in one line; choices are checked in one place. No torch here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fastfc import config as configlib
from fastfc.cifar.config import resolve as resolve_cifar
from fastfc.distill_config import DistillConfig
from fastfc.stage_config import EvalConfig, FeaturesConfig, ProbeConfig

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "launch" / "configs").glob("*.toml"))


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each test starts as a new process would: no note printed yet."""
    monkeypatch.setattr(configlib, "_NOTED", set())
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def _toml_value(value) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, booleans, integers and other floats read back as TOML


def dump_toml(data: dict) -> str:
    """A TOML text of a config dict (top-level values, then one table per section)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines += [f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def with_old_keys(data: dict, command: str) -> dict:
    """``data`` with every key renamed since (:data:`fastfc.config.RENAMED`) under its older name."""
    old = json.loads(json.dumps(data))
    for before, now in configlib.RENAMED[command].items():
        found, value = configlib._pop(old, now)
        if found:
            configlib.set_key(old, before, value)
    return old


def _resolved(path: Path) -> dict:
    if path.name.startswith("cifar_"):
        return configlib.to_dict(resolve_cifar("paper", path))
    return configlib.to_dict(configlib.load(DistillConfig, path))


# What each launch config's older-key twin is told, in order (RENAMED's order, keys the file sets).
NOTES = {"distill": ["[model] arch is now [encoder] name", "[model] student_seed is now [encoder] seed",
                     "[model] init is now [encoder] init", "[model] teacher_pretrained is now [teacher] pretrained",
                     "[data] num_workers is now [data] workers"],
         "cifar": ["[data] num_workers is now [data] workers"]}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_each_launch_config_written_with_the_older_keys_resolves_to_the_same_config(path, tmp_path, capsys):
    command = "cifar" if path.name.startswith("cifar_") else "distill"
    data = configlib.tomllib.loads(path.read_text())
    old = with_old_keys(data, command)
    assert old != data and "num_workers" in old["data"] and "workers" not in old["data"]
    (tmp_path / path.name).write_text(dump_toml(old))
    new_config = _resolved(path)
    assert capsys.readouterr().err == ""  # the launch configs themselves use the new names: no note
    assert _resolved(tmp_path / path.name) == new_config
    notes = capsys.readouterr().err.splitlines()
    assert notes == [f"note: {tmp_path / path.name}: {line}" for line in NOTES[command]]
    if command == "distill":
        assert "model" in old and "encoder" not in old and "teacher" not in old
        assert new_config["encoder"]["name"] == data["encoder"]["name"] and new_config["data"]["workers"] == 8
        assert new_config["teacher"] == {"pretrained": "openai", "weights": None}


def test_a_second_read_of_the_same_file_says_nothing_more(tmp_path, capsys):
    toml = tmp_path / "old.toml"
    toml.write_text('[model]\narch = "RN101"\n')
    for _ in range(3):
        assert configlib.load(DistillConfig, toml).encoder.name == "RN101"
    assert capsys.readouterr().err == f"note: {toml}: [model] arch is now [encoder] name\n"


def test_only_the_first_process_prints_the_note(tmp_path, capsys, monkeypatch):
    toml = tmp_path / "old.toml"
    toml.write_text('[data]\nnum_workers = 3\n')
    monkeypatch.setenv("RANK", "1")
    assert configlib.load(DistillConfig, toml, ["model.student_seed=4"]).data.workers == 3
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(configlib, "_NOTED", set())
    monkeypatch.setenv("RANK", "0")
    cfg = configlib.load(DistillConfig, toml, ["model.student_seed=4"])
    assert (cfg.data.workers, cfg.encoder.seed) == (3, 4)
    assert capsys.readouterr().err.splitlines() == [f"note: {toml}: [data] num_workers is now [data] workers",
                                                    "note: --set model.student_seed is now encoder.seed"]


def test_the_stage_commands_take_extract_batch_size_and_workers_as_data_keys(tmp_path, capsys):
    toml = tmp_path / "p.toml"
    toml.write_text('[encoder]\nname = "tiny"\n[extract]\ncache = "c"\nbatch_size = 64\nworkers = 2\n')
    for cls in (FeaturesConfig, ProbeConfig, EvalConfig):
        cfg = configlib.load(cls, toml)
        assert (cfg.data.batch_size, cfg.data.workers, cfg.extract.cache) == (64, 2, "c")
        assert cfg.extract_options() == {"batch_size": 64, "num_workers": 2, "precision": "bf16"}
    assert capsys.readouterr().err.splitlines() == [f"note: {toml}: [extract] batch_size is now [data] batch_size",
                                                    f"note: {toml}: [extract] workers is now [data] workers"]
    assert configlib.load(ProbeConfig, None, ["extract.workers=5"], flags={"data.batch_size": 8}).data.workers == 5
    with pytest.raises(configlib.ConfigError, match="unknown key"):  # distill's older key is no probe key
        configlib.load(ProbeConfig, None, ["data.num_workers=5"])


def test_an_older_key_and_its_new_name_must_agree(tmp_path):
    toml = tmp_path / "both.toml"
    toml.write_text('[model]\narch = "RN50"\n[encoder]\nname = "RN50"\n')
    assert configlib.load(DistillConfig, toml).encoder.name == "RN50"  # the same value: fine
    toml.write_text('[model]\narch = "RN50"\n[encoder]\nname = "RN101"\n')
    with pytest.raises(configlib.ConfigError) as e:
        configlib.load(DistillConfig, toml)
    assert str(e.value) == (f"{toml}: [model] arch = 'RN50' and [encoder] name = 'RN101' disagree; drop [model] "
                            "arch (now [encoder] name)")
    with pytest.raises(configlib.ConfigError) as e:
        configlib.load(DistillConfig, None, ["data.workers=2", "data.num_workers=3"])
    assert str(e.value) == ("--set data.workers=2 and --set data.num_workers=3 disagree (data.num_workers is now "
                            "data.workers); give data.workers once")
    cfg = configlib.load(DistillConfig, None, ["data.workers=2", "data.num_workers=2", "encoder.name=RN101"])
    assert (cfg.data.workers, cfg.encoder.name) == (2, "RN101")


def test_a_checkpoints_older_config_is_upgraded_quietly(capsys):
    saved = {"model": {"arch": "tiny", "teacher_pretrained": None, "teacher_weights": None, "student_seed": 0,
                       "init": "paper"}, "data": {"train_beton": "t.beton", "num_workers": 1, "augment": False}}
    assert configlib.upgrade(saved, "distill") == {
        "encoder": {"name": "tiny", "seed": 0, "init": "paper"}, "teacher": {"pretrained": None, "weights": None},
        "data": {"train_beton": "t.beton", "augment": False, "workers": 1}}
    assert capsys.readouterr().err == ""


def test_choices_are_typed_fields_checked_in_one_place():
    fields = {f.name: f for f in configlib.dataclasses.fields(ProbeConfig().probe)}
    assert fields["kind"].metadata["choices"] == ("clip", "distilled")
    with pytest.raises(configlib.ConfigError, match="probe: kind must be one of clip, distilled, got 'student'"):
        configlib.load(ProbeConfig, None, ["probe.kind=student"])
    with pytest.raises(configlib.ConfigError, match="train: train.schedule must be one of cosine, step, got 'linear'"):
        configlib.load(DistillConfig, None, ["train.schedule=linear"])
    with pytest.raises(configlib.ConfigError, match="encoder: encoder.init must be one of paper, open_clip"):
        configlib.load(DistillConfig, None, ["model.init=xavier"])
