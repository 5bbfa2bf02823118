"""The package as a whole: light import, no import cycles, the command line's error contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from focus_detr.cli import main

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return completed.stdout


def test_import_is_light_and_names_load_on_first_use() -> None:
    heavy = ("torch", "torchvision", "scipy", "faster_coco_eval", "triton")
    loaded = _python(
        "import sys, focus_detr\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
        "focus_detr.build_model\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
    ).splitlines()
    assert loaded[0] == "[]"
    assert loaded[1] == "['torch']"  # building a model needs torch, nothing else heavy


def test_no_import_cycles() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "tools" / "import_cycles.py"), "--all"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout
    assert "0 module-level and deferred import cycles" in completed.stdout


def test_module_entry_point() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "focus_detr.cli", "presets"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0 and "focus_detr_r50_4scale_12ep" in completed.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["predict", "x.jpg", "--weights", "w.pth", "--out", "o", "--threshold", "nan"], "finite"),
        (["predict", "x.jpg", "--weights", "w.pth", "--out", "o", "--threshold", "1.5"], "[0, 1]"),
        (["predict", "x.jpg", "--weights", "w.pth", "--out", "o", "--min-size", "0"], "positive"),
        (["predict", "x.jpg", "--weights", "w.pth", "--out", "o", "--keep-ratio", "0"], "(0, 1]"),
        (["train", "--max-iters", "0"], "positive"),
        (["train", "--max-iters", "-5"], "positive"),
        (["benchmark", "--size", "800"], "800x1333"),
    ],
)
def test_bad_option_values_are_usage_errors(arguments, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_user_mistakes_print_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys) -> None:
    assert main(["train", "--train-images", "x"]) == 2  # half of a pair of options
    assert capsys.readouterr().err == "error: give both --train-images and --train-annotations\n"
    assert main(["train", "--preset", "no_such_preset", "--data", str(REPO)]) == 2
    from focus_detr.cli import presets

    def broken(args):
        raise ValueError("an internal inconsistency")

    monkeypatch.setattr(presets, "run", broken)
    with pytest.raises(ValueError, match="internal inconsistency"):
        main(["presets"])
