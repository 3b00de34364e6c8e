import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from imageextract.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_analyze_exit_codes(image_folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["-q", "analyze", str(image_folder), "--out", str(out), "--nm-per-px", "1.5"]) == 0
    assert "3 analysed" in capsys.readouterr().out
    (image_folder / "broken.png").write_text("x")
    assert main(["-q", "analyze", str(image_folder), "--out", str(out), "--nm-per-px", "1.5"]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err


def test_analyze_summary_counts_micrographs_without_particles(image_folder, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((120, 150), 90, np.uint8)).save(image_folder / "blank.png")
    out = tmp_path / "out"
    assert main(["-q", "analyze", str(image_folder), "--out", str(out), "--nm-per-px", "1.5"]) == 0
    assert "4 analysed (1 with no particles), 0 already done, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["analyze", "x"],                                  # missing --out
    ["analyze", "x", "--out", "o", "--nm-per-px", "abc"],
    ["analyze", "x", "--out", "o", "--workers", "0"],
    ["frobnicate"],
    [],
])
def test_usage_errors_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2


def test_unknown_backend_message(image_folder, tmp_path, capsys):
    assert main(["analyze", str(image_folder), "--out", str(tmp_path / "o"), "--backend", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown segmentation backend 'nope'" in err and "classical" in err
    assert "Traceback" not in err


def test_backends_lists_classical(capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "classical" in out and "bpartis" in out


def test_backend_option(image_folder, tmp_path):
    out = tmp_path / "o"
    assert main(["-q", "analyze", str(image_folder / "light.png"), "--out", str(out),
                 "--backend-option", "split=false", "--backend-option", "min_area_px=50"]) == 0
    with sqlite3.connect(out / "results.sqlite") as con:
        cfg = json.loads(con.execute("SELECT config_json FROM runs").fetchone()[0])
    assert cfg["backend_options"] == {"split": False, "min_area_px": 50}


def test_run_pipeline_with_overrides(image_folder, tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text(f'[input]\npaths = ["{image_folder.as_posix()}"]\n[output]\ndir = "{(tmp_path / "x").as_posix()}"\n')
    out = tmp_path / "y"
    assert main(["-q", "run", str(toml), f"output.dir={out.as_posix()}", "calibration.nm_per_px=2.0"]) == 0
    parts = pd.read_csv(out / "particles.csv")
    assert set(parts.nm_per_px) == {2.0} and not (tmp_path / "x").exists()


def test_run_bad_pipeline(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[input\npaths=")
    assert main(["run", str(bad)]) == 2
    assert main(["run", str(tmp_path / "missing.toml")]) == 2


def test_shipped_pipeline_parses():
    from imageextract.config import load_pipeline

    cfg = load_pipeline(ROOT / "pipelines" / "local-collection.toml", ["run.workers=2"])
    assert cfg["segmentation"]["backend"] == "classical" and cfg["run"]["workers"] == 2


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "imageextract", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("analyze", "run", "backends", "evaluate", "train"):
        assert cmd in r.stdout


def test_train_exclude_list_errors_are_messages(tmp_path, capsys):
    pytest.importorskip("torch")
    rc = main(["train", "bpartis", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
               "--exclude", str(tmp_path / "missing.txt")])
    err = capsys.readouterr().err
    assert rc != 0 and "cannot read the stem list" in err and "missing.txt" in err
    assert "Traceback" not in err
    assert main(["train", "bpartis", "--data", str(tmp_path), "--out", "m",
                 "--elongated-weight", "0"]) == 2


def test_train_turn_consistency_reaches_the_trainer(tmp_path, monkeypatch, capsys):
    """``--turn-consistency W_OFFSET W_SIGMA`` is passed on as a pair; bad
    weights are a message, not a traceback."""
    pytest.importorskip("torch")
    import importlib

    bt = importlib.import_module("imageextract.segment.bpartis.train")

    seen = {}
    monkeypatch.setattr(bt, "train", lambda data, out, **kw: seen.update(kw))
    assert main(["train", "bpartis", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--turn-consistency", "0.03", "0.1"]) == 0
    assert seen["turn_consistency"] == (0.03, 0.1)
    seen.clear()
    assert main(["train", "bpartis", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 0
    assert "turn_consistency" not in seen
    monkeypatch.undo()
    rc = main(["train", "bpartis", "--data", str(tmp_path), "--out", str(tmp_path / "m2"),
               "--turn-consistency", "-1", "0"])
    err = capsys.readouterr().err
    assert rc != 0 and "turn-consistency weights must be >= 0" in err and "Traceback" not in err


def test_train_rotate_and_paste_reach_the_trainer(tmp_path, monkeypatch, capsys):
    """``--rotate P``, ``--paste P`` and ``--stretch P`` reach the trainer as probabilities,
    ``--repel-weight W`` as the loss term's weight
    (absent when not given, so older recipes stay as they were); a bad one
    is a message, not a traceback."""
    pytest.importorskip("torch")
    import importlib

    bt = importlib.import_module("imageextract.segment.bpartis.train")

    seen = {}
    monkeypatch.setattr(bt, "train", lambda data, out, **kw: seen.update(kw))
    assert main(["train", "bpartis", "--data", str(tmp_path), "--out", str(tmp_path / "m"),
                 "--rotate", "0.5", "--paste", "0.3", "--stretch", "0.2",
                 "--repel-weight", "1.5"]) == 0
    assert seen["p_rotate"] == 0.5 and seen["p_paste"] == 0.3 and seen["p_stretch"] == 0.2
    assert seen["repel_weight"] == 1.5
    seen.clear()
    assert main(["train", "bpartis", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 0
    assert not {"p_rotate", "p_paste", "p_stretch", "repel_weight"} & set(seen)
    monkeypatch.undo()
    rc = main(["train", "bpartis", "--data", str(tmp_path), "--out", str(tmp_path / "m2"),
               "--paste", "2"])
    err = capsys.readouterr().err
    assert rc != 0 and "pasting rods onto a crop must be in [0, 1]" in err
    assert "Traceback" not in err


def test_both_training_command_lines_check_the_shared_options_alike(capsys):
    # `imageextract train` and the trainer's own command line declare the
    # shared training options in one place (cli.add_training_options)
    from imageextract.segment.bpartis.train import _main

    for argv, run in ((["train", "bpartis"], main), ([], _main)):
        for bad in (["--elongated-weight", "0"], ["--epochs", "0"], ["--max-minutes", "-1"]):
            try:  # main returns the exit code, the trainer's parser exits with it
                code = run([*argv, "--data", "d", "--out", "o", *bad])
            except SystemExit as exc:
                code = exc.code
            assert code == 2
            err = capsys.readouterr().err
            assert bad[0] in err and "expected" in err and "Traceback" not in err


def test_the_trainers_own_command_line_passes_the_shared_options_alike(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import importlib

    bt = importlib.import_module("imageextract.segment.bpartis.train")
    seen = {}
    monkeypatch.setattr(bt, "train", lambda data, out, **kw: seen.update(kw) or {})
    assert bt._main(["--data", str(tmp_path), "--out", str(tmp_path / "m"), "--crop", "128",
                     "--paste", "0.3", "--turn-consistency", "0.03", "0.1"]) == 0
    assert seen["p_paste"] == 0.3 and seen["turn_consistency"] == (0.03, 0.1)
    assert seen["crop"] == 128 and seen["workers"] == 0 and seen["resume"] is False
    seen.clear()
    assert bt._main(["--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 0
    assert not {"p_rotate", "p_paste", "p_stretch", "exclude", "epochs"} & set(seen)


def test_both_training_command_lines_pass_the_rescorers_finishing_options(tmp_path, monkeypatch,
                                                                           capsys):
    # one command finishes a network as the shipped model was: rescorer on the
    # proposals at 0.8, 1 and 1.25 x the scale found, threshold 0.7
    pytest.importorskip("torch")
    import importlib

    bt = importlib.import_module("imageextract.segment.bpartis.train")
    seen = {}
    monkeypatch.setattr(bt, "finish", lambda data, out, **kw: seen.update(kw) or {})
    monkeypatch.setattr(bt, "train", lambda data, out, **kw: pytest.fail("trained"))
    d, o = str(tmp_path), str(tmp_path / "m")
    for run in (lambda a: main(["train", "bpartis", *a]), bt._main):
        assert run(["--data", d, "--out", o, "--finish", "--rescore-factors", "0.8", "1",
                    "1.25", "--rescore-threshold", "0.7"]) == 0
        assert seen["rescore_factors"] == [0.8, 1.0, 1.25] and seen["rescore_threshold"] == 0.7
        seen.clear()
        assert run(["--data", d, "--out", o, "--finish"]) == 0  # finish keeps its defaults
        assert not {"rescore_factors", "rescore_threshold"} & set(seen)
        for bad in (["--rescore-factors", "1"], ["--finish", "--rescore-threshold", "1"],
                    ["--finish", "--rescore-factors", "0"]):
            try:  # main returns the exit code, the trainer's parser exits with it
                code = run(["--data", d, "--out", o, *bad])
            except SystemExit as exc:
                code = exc.code
            err = capsys.readouterr().err
            assert code == 2 and "Traceback" not in err
            assert ("go with --finish" if bad[0] != "--finish" else "expected a number") in err


def test_finish_hands_the_rescorers_options_to_its_fit(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    import importlib

    bt = importlib.import_module("imageextract.segment.bpartis.train")
    rf = importlib.import_module("imageextract.segment.bpartis.rescore_fit")
    seen = {}
    monkeypatch.setattr(bt, "fit_size", lambda *a, **kw: {})
    monkeypatch.setattr(bt, "export", lambda *a, **kw: None)
    monkeypatch.setattr(rf, "fit_for_model", lambda *a, **kw: seen.update(kw) or {})
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"inference": {"mc_samples": 8}}))
    bt.finish(tmp_path, tmp_path / "m", progress=False, outline=False, inference_from=base,
              rescore_factors=[0.8, 1, 1.25], rescore_threshold=0.7)
    assert seen["factors"] == (0.8, 1, 1.25) and seen["threshold"] == 0.7
    seen.clear()
    bt.finish(tmp_path, tmp_path / "m", progress=False, outline=False, inference_from=base)
    assert seen["factors"] == (1.0,) and seen["threshold"] is None
    # bad options are refused before the size model is fitted
    monkeypatch.setattr(bt, "fit_size", lambda *a, **kw: pytest.fail("fitted"))
    for bad in ({"rescore_factors": []}, {"rescore_factors": [0.8, -1]},
                {"rescore_threshold": 1.5}):
        with pytest.raises(ValueError, match="rescore_"):
            bt.finish(tmp_path, tmp_path / "m", progress=False, **bad)
