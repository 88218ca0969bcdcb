"""The command lines answer fast and plainly: ``--help`` and argument, config and input errors come
before torch (and ffcv, open_clip, numba) is imported; ``.venv/bin/fastfc`` is installed; errors are
one actionable line; the toy experiment records about 50 points whatever ``--steps``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "ffcv", "open_clip", "numba", "webdataset", "timm", "cv2")
FASTFC = [sys.executable, "-m", "fastfc"]
IMAGENET = [sys.executable, "-m", "data_prep.imagenet"]
SHIFTS = [sys.executable, "-m", "data_prep.shifts"]


def run_with_importtime(argv: list[str], cwd: Path) -> tuple[int, set[str], list[str]]:
    """Run ``argv`` under ``python -X importtime``: exit code, top-level packages imported, and the
    stderr lines that are not import timings."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    imported, other = set(), []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[1].strip().split(".")[0])
        elif line.strip():
            other.append(line)
    return proc.returncode, imported, other


HELP = [FASTFC + ["--help"]] + [FASTFC + [c, "--help"] for c in ("distill", "features", "probe", "eval", "demo", "toy")] \
    + [FASTFC + ["cifar", *a, "--help"] for a in ([], ["train"], ["visualize"])] \
    + [IMAGENET + ["--help"], SHIFTS + ["--help"]] + [FASTFC + ["convert", *a, "--help"] for a in ([], ["imagenet"], ["shifts"])]


@pytest.mark.parametrize("argv", HELP, ids=lambda a: " ".join(a[2:]))
def test_help_imports_no_heavy_library(argv, tmp_path):
    code, imported, _ = run_with_importtime(argv, tmp_path)
    assert code == 0 and not imported & set(HEAVY), sorted(imported & set(HEAVY))


ERRORS = [  # argv, exit code, text of the one error line
    (FASTFC + ["distill", "--config", "nope.toml"], 1, "nope.toml: no such config file"),
    (FASTFC + ["distill", "--set", "lr"], 1, "expected section.key=value"),
    (FASTFC + ["distill", "--set", "model.arch=RN50", "--set", "encoder.name=RN101"], 1,
     "--set model.arch=RN50 and --set encoder.name=RN101 disagree (model.arch is now encoder.name); give encoder.name once"),
    (FASTFC + ["probe", "--encoder", "tiny"], 2, "the following arguments are required: --train, --out"),
    (FASTFC + ["probe", "--encoder", "tiny", "--train", "nope.beton", "--out", "p.pt"], 1, "--train nope.beton"),
    (FASTFC + ["features", "--encoder", "tiny", "nope.beton"], 1, "nope.beton: no such file or folder"),
    (FASTFC + ["features", "--encoder", "tiny", "--workers", "-1", "x"], 2, "must be >= 0"),
    (FASTFC + ["features", "--encoder", "RN18", "x.beton"], 1, "unknown encoder 'RN18'"),
    (FASTFC + ["distill", "--set", "encoder.name=CLIP_RN18"], 1, "encoder: unknown encoder 'CLIP_RN18'"),
    (FASTFC + ["eval", "--compare", "runs/nope"], 1,
     "fastfc eval: error: --compare runs/nope: no such folder; give run folders written by `fastfc eval --out RUN`"),
    (FASTFC + ["eval", "--encoder", "tiny", "--probe", "p.pt"], 1, "nothing to evaluate"),
    (FASTFC + ["toy", "--set", "loss=l1"], 2, "loss='l1'; choose one of logistic"),
    (FASTFC + ["toy", "--steps", "0"], 2, "steps=0; expected a positive integer"),
    (FASTFC + ["cifar", "train"], 2, "--variant raw|background is required"),
    (FASTFC + ["cifar", "train", "--variant", "blue"], 2, "argument --variant: invalid choice: 'blue'"),
    (FASTFC + ["cifar", "train", "--config", "nope.toml"], 1, "nope.toml: no such config file"),
    (FASTFC + ["cifar", "train", "--variant", "raw", "--set", "train.lr=abc"], 1, "train.lr: expected a number"),
    (FASTFC + ["cifar", "train", "--variant", "raw", "--set", "attack.steps=0"], 1, "attack.steps must be >= 1"),
    (FASTFC + ["cifar", "train", "--variant", "raw", "--set", "train=3"], 1, "train is a section ([train] in TOML"),
    (FASTFC + ["cifar", "visualize", "runs/raw", "runs/bg", "--out", "f"], 1, "runs/raw/weights.pt: no trained weights"),
    (IMAGENET, 2, "the following arguments are required: --src"),
    (IMAGENET + ["--src", "nope", "--out", "out"], 1, "nope: does not exist"),
    (SHIFTS + ["--set", "imagenet-r", "--out", "out"], 2, "the following arguments are required: --src"),
    (SHIFTS + ["--set", "imagenet-r", "--src", "nope", "--out", "out"], 1, "nope: folder not found"),
    (FASTFC + ["convert"], 2, "the following arguments are required: converter"),
    (FASTFC + ["convert", "beton"], 2, "argument converter: invalid choice: 'beton'"),
    (FASTFC + ["convert", "imagenet", "--src", "nope", "--out", "out"], 1, "nope: does not exist"),
    (FASTFC + ["convert", "shifts", "--set", "imagenet-r", "--src", "nope", "--out", "out"], 1, "nope: folder not found"),
]


@pytest.mark.parametrize("argv, code, message", ERRORS, ids=lambda a: " ".join(a[2:]) if isinstance(a, list) else "")
def test_argument_and_input_errors_come_before_heavy_imports(argv, code, message, tmp_path):
    got, imported, lines = run_with_importtime(argv, tmp_path)
    assert got == code and not imported & set(HEAVY), (got, sorted(imported & set(HEAVY)), lines)
    errors = [line for line in lines if "error" in line or "nothing to evaluate" in line]
    assert len(errors) == 1 and message in errors[0], lines
    assert not any("Traceback" in line for line in lines)


CONFIG_ERRORS = [  # command, TOML text, what the one error line says after the file's name
    ("features", '[extract]\nbatch_sise = 64\n', "unknown key(s) extract.batch_sise"),
    ("features", 'sources = "a.beton"\n[extract]\nprecision = "fp16"\n', "extract: precision must be one of bf16, fp32, got 'fp16'"),
    ("probe", '[probe]\nepoch = 2\n', "unknown key(s) probe.epoch"),
    ("probe", '[probe]\nepochs = "two"\n', "probe.epochs: expected an integer, got 'two'"),
    ("probe", '[probe]\nkind = "student"\n', "probe: kind must be one of clip, distilled"),
    ("probe", '[probe]\nlr = -1\n', "probe: need lr > 0, warmup >= 0 and wd >= 0; got lr=-1.0"),
    ("probe", '[encoder]\nname = "RN50"\n[data]\nbatch_size = 8\n[probe.wd]\n', "probe.wd: expected a number, got {}"),
    ("features", 'extract = 3\n', "extract is a section ([extract] in TOML"),
    ("eval", '[teacher]\ntag = "openai"\n', "unknown key(s) teacher.tag"),
    ("eval", '[eval]\nsets = 3\n', "eval: sets must be a list of strings, got 3"),
    ("eval", '[encoder]\nname = "RN18"\n', "encoder: unknown encoder 'RN18'; known: RN50"),
    ("distill", '[encoder]\nname = "RN18"\n', "encoder: unknown encoder 'RN18'; known: RN50"),
    ("distill", '[encoder]\ninit = "xavier"\n', "encoder: encoder.init must be one of paper, open_clip"),
    ("distill", '[train]\nlrr = 1\n', "unknown key(s) train.lrr"),
    ("distill", '[objective]\ndistill_weight = "high"\n', "objective.distill_weight: expected a number"),
    ("distill", '[objective]\nblocks = "foo"\n', "objective: blocks must be 'last', 'all' or block indices"),
    ("distill", 'encoder = "RN50"\n', "encoder is a section ([encoder] in TOML"),
    ("distill", '[model]\narch = "RN50"\n[encoder]\nname = "RN101"\n',
     "[model] arch = 'RN50' and [encoder] name = 'RN101' disagree; drop [model] arch (now [encoder] name)"),
    ("probe", '[extract]\nworkers = 2\n[data]\nworkers = 3\n',
     "[extract] workers = 2 and [data] workers = 3 disagree; drop [extract] workers (now [data] workers)"),
]


@pytest.mark.parametrize("command, toml, message", CONFIG_ERRORS, ids=lambda a: a if isinstance(a, str) and "\n" not in a else "")
def test_a_bad_config_is_one_line_naming_file_and_key_before_heavy_imports(command, toml, message, tmp_path):
    (tmp_path / "bad.toml").write_text(toml)
    flags = {"probe": ["--encoder", "tiny", "--train", "t.beton", "--out", "p.pt"], "distill": ["--dry-run"]}.get(
        command, ["--encoder", "tiny"])
    got, imported, lines = run_with_importtime(FASTFC + [command, "--config", "bad.toml", *flags], tmp_path)
    assert got == 1 and not imported & set(HEAVY), (got, sorted(imported & set(HEAVY)), lines)
    errors = [line for line in lines if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(f"fastfc {command}: error: bad.toml: {message}"), lines
    assert not any("Traceback" in line for line in lines)


def test_an_older_key_in_the_file_or_in_set_is_one_note_naming_its_new_name(tmp_path):
    (tmp_path / "old.toml").write_text('[model]\narch = "RN101"\n[train]\nlr = 2e-4\n')
    done = subprocess.run(FASTFC + ["distill", "--config", "old.toml", "--set", "data.num_workers=2", "--dry-run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert notes == ["note: old.toml: [model] arch is now [encoder] name", "note: --set data.num_workers is now data.workers"]
    config = json.loads(done.stdout)["config"]
    assert (config["encoder"]["name"], config["data"]["workers"], config["train"]["lr"]) == ("RN101", 2, 2e-4)
    assert "model" not in config and "num_workers" not in config["data"]
    (tmp_path / "f.toml").write_text('[extract]\nworkers = 1\n')  # features: before torch, as any config
    got, imported, lines = run_with_importtime(FASTFC + ["features", "--config", "f.toml", "--encoder", "tiny",
                                                         "--set", "extract.batch_size=4", "nope.beton"], tmp_path)
    assert got == 1 and not imported & set(HEAVY), lines
    assert [line for line in lines if line.startswith("note:")] == [
        "note: f.toml: [extract] workers is now [data] workers", "note: --set extract.batch_size is now data.batch_size"]


@pytest.mark.parametrize("command", ["features", "probe", "eval"])
def test_the_flags_are_the_config_fields_that_have_one(command, capsys):
    """--help lists one flag per config field with flag metadata, and each flag sets that field."""
    import re

    from fastfc.cli import build_parser
    from fastfc.config import flag_fields
    from fastfc.stage_config import EvalConfig, FeaturesConfig, ProbeConfig

    cls = {"features": FeaturesConfig, "probe": ProbeConfig, "eval": EvalConfig}[command]
    fields = {f.metadata["flag"]: key for key, f, _ in flag_fields(cls)}
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    listed = set(re.findall(r"^  (--[a-z-]+)", capsys.readouterr().out, flags=re.M)) - {"--help", "--config", "--set"}
    assert listed == set(fields) and len(fields) == {"features": 7, "probe": 18, "eval": 20}[command]
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    assert {a.option_strings[0]: a.dest for a in parser._actions if "." in a.dest} == fields
    if command == "probe":
        args = build_parser().parse_args(["probe", "--batch-size", "8", "--workers", "0", "--wd-sweep", "1e-3,0.1",
                                          "--from-images", "--kind", "distilled"])
        assert (vars(args)["data.batch_size"], vars(args)["data.workers"], vars(args)["probe.wd_sweep"]) == (8, 0, [1e-3, 0.1])
        assert vars(args)["probe.from_images"] is True and vars(args)["probe.kind"] == "distilled"
        assert "extract.precision" not in vars(args)  # a flag not given leaves the config file's value


def test_required_settings_come_from_the_flags_or_the_config(tmp_path):
    (tmp_path / "p.toml").write_text('[encoder]\nname = "tiny"\n[probe]\ntrain = "nope.beton"\nout = "p.pt"\n')
    got, imported, lines = run_with_importtime(FASTFC + ["probe", "--config", "p.toml"], tmp_path)
    assert got == 1 and not imported & set(HEAVY)  # --train, --out and --encoder given by the file
    assert [line for line in lines if "error" in line] == [
        "fastfc probe: error: --train nope.beton: no such file or folder; give the ImageNet train folder "
        "(<wnid>/*), its shards, or a train.beton written by `python -m data_prep.imagenet` (its meta.json "
        "lists the classes)"]
    got, _, lines = run_with_importtime(FASTFC + ["features", "--config", "p.toml"], tmp_path)
    assert got == 1 and "p.toml: unknown key(s) probe;" in lines[0]  # each command accepts its own sections only

def test_eval_compare_and_its_plot_answer_without_importing_torch(tmp_path):
    """``fastfc eval --compare`` reads finished runs through the torch-free report (fastfc/report.py)."""
    from fastfc.result_files import wilson, write_results

    for name, (id_correct, r_correct) in {"teacher": (98, 80), "student": (90, 60)}.items():
        sets = {s: {"top1": c / 100, "correct": c, "n": 100, "ci95": list(wilson(c, 100)), "chance": 0.1,
                    "projection": "none", "source": s, "label_space": s}
                for s, c in (("imagenet-val", id_correct), ("imagenet-r", r_correct))}
        write_results(tmp_path / name, {"sets": sets, "train": None, "encoder": name})
    script = ("import sys; from fastfc.cli import main; code = main(sys.argv[1:]); "
              f"print('heavy:', sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, "eval", "--compare", "teacher", "student", "--plot", "p.png"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "heavy: []"  # no torch (nor ffcv, open_clip, ...) in sys.modules
    assert lines[0] == "| run | ID | imagenet-r | OOD avg | ΔID | ΔOOD | ΔOOD ÷ ΔID |"
    assert lines[2] == "| teacher | 98.0 (93.0–99.4) | 80.0 (71.1–86.7) | 80.0 | +0.0 | +0.0 | — |"
    assert lines[3] == "| student | 90.0 (82.6–94.5) | 60.0 (50.2–69.1) | 60.0 | -8.0 | -20.0 | 2.50 |"
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_script_is_installed_next_to_the_interpreter():
    script = Path(sys.executable).parent / "fastfc"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("usage: fastfc ")


def test_readme_runs_fastfc_through_the_venv_never_a_bare_python():
    text = (REPO / "README.md").read_text()
    blocks = text.split("```bash\n")[1:]
    commands = [line for block in blocks for line in block.split("```")[0].splitlines() if line and line[0] not in "# "]
    assert ".venv/bin/fastfc toy --steps 1000" in "\n".join(commands)
    bare = [c for c in commands if c.startswith(("python", "torchrun", "fastfc", "pip"))]
    assert bare == [] and "python -m fastfc" not in text


def test_toy_records_about_50_points_when_record_every_is_not_given(tmp_path, capsys):
    from fastfc.cli import main

    assert main(["toy", "--steps", "1000", "--out", str(tmp_path)]) == 0  # the README's quick check
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(0, 1001, 20))  # 51 records: init + every 20 steps; used to be [0, 1000]
    assert json.loads((tmp_path / "config.json").read_text())["record_every"] == 20


def test_an_error_raised_in_a_loader_worker_is_reported_by_its_own_message():
    # torch re-raises a worker's exception as "Caught ShardFormatError in DataLoader worker process 0."
    # plus the worker's traceback; the CLI used to print only that first line, which names no file
    from torch._utils import ExceptionWrapper

    from fastfc.cli import _message
    from fastfc.data.shards import ShardFormatError

    try:
        raise ShardFormatError("/data/val/n01440764/bad.JPEG: truncated image data")
    except ShardFormatError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(ShardFormatError) as err:
        wrapped.reraise()
    assert str(err.value).startswith("Caught ShardFormatError in DataLoader worker process 0.")
    assert _message(err.value) == "/data/val/n01440764/bad.JPEG: truncated image data"


def test_features_of_a_val_folder_with_a_random_encoder_land_in_one_cache_folder(tmp_path):
    # `features --help` lists an ImageNet val folder as a source (it was refused: "no meta.json"); an
    # encoder without weights is a seeded random baseline, so a second run reuses the first one's cache
    from fastfc.fixtures.photos import make_imagenet_tree

    make_imagenet_tree(tmp_path / "src", n_classes=3, train_per_class=2, val_per_class=2, quirks=False)
    argv = FASTFC + ["features", "--encoder", "tiny", "--cache", str(tmp_path / "cache"), str(tmp_path / "src" / "val")]
    runs = [subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    assert "a random-init encoder (seed 0" in runs[0].stderr
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the same network both times
    assert "6 x 32 float16" in runs[0].stdout and "6 x 32 float16" in runs[1].stdout
