"""What a user of the command line sees: --version, defaults in --help, messages that name what to
set, stdout that stays parseable, progress on stderr, a closed pipe that ends quietly."""

import argparse
import json
import re
import subprocess
import sys

import pytest

from detectors import __version__
from normalcy.cli import build_parser, main


def help_text(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def option_help(command: str, option: str) -> str:
    """The help of one option of `normalcy COMMAND --help`, on one line."""
    blocks = re.split(r"\n(?=  -)", help_text(command).split("options:", 1)[1])
    block = next(b for b in blocks if re.match(rf"\s*(-\w, )?{option}\b", b))
    return " ".join(block.split())


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"normalcy {__version__}\n"


@pytest.mark.parametrize(
    ("command", "option", "default"),
    [
        ("train", "--epochs", "10"),
        ("train", "--batch-size", "64"),
        ("train", "--lr", "0.001"),
        ("train", "--alpha", "0.01"),
        ("train", "--patience", "3"),
        ("report", "--max-images", "2000"),
        ("score", "--batch-size", "256"),
        ("calibrate", "--probability", "isotonic"),
    ],
)
def test_help_states_each_default(command, option, default):
    assert option_help(command, option).endswith(f"(default: {default})")


def test_help_states_no_default_where_there_is_none():
    text = help_text("train")
    assert "default: None" not in text
    assert "default: False" not in text


def test_train_help_says_what_the_time_budget_covers():
    text = option_help("train", "--max-minutes")
    for field in ("train_seconds", "validation_seconds", "calibration_seconds", "total_seconds"):
        assert field in text


def test_serve_without_a_model_folder_names_the_flag_and_the_variable(monkeypatch, capsys):
    monkeypatch.delenv("NORMALCY_MODELS_DIR", raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "--models DIR or NORMALCY_MODELS_DIR is required" in err
    assert "Field required" not in err


def test_output_into_a_closed_pipe_ends_quietly(vae_bundle):
    # `normalcy info x.onnx | head -0`: the reader is gone before the command writes.
    process = subprocess.Popen(
        [sys.executable, "-m", "normalcy.cli", "info", str(vae_bundle), "--full"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait() == 141  # as a shell reports a process ended by SIGPIPE
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err


def test_evaluate_shows_a_progress_bar_on_stderr_and_only_json_on_stdout(vae_bundle, capsys):
    argv = ["evaluate", str(vae_bundle), "--data", "digits:test", "--normal-classes", "0,1,2,3,4"]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    n = report["n_normal"] + report["n_anomalous"]
    assert "scoring: 100%" in err
    assert f"{n}/{n}" in err
    assert main([*argv, "--json", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_training_into_a_file_writes_a_line_per_epoch_and_no_carriage_returns(tmp_path, capsys):
    # pytest's stderr is not a terminal: as `normalcy train ... 2> log`. The report is on.
    argv = ["train", "pixelcnn", "--data", "digits:train", "--normal-classes", "0,1"]
    argv += ["--epochs", "2", "--hidden", "4", "--layers", "1", "--kernel", "3"]
    assert main([*argv, "--out", str(tmp_path / "m.onnx")]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["val_nll_bits_per_dim"] > 0  # stdout is the summary alone
    assert "\r" not in err
    epochs = [line for line in err.splitlines() if line.startswith("pixelcnn epoch")]
    # The model's two epochs, then its 3x3 local model's.
    assert [line.split(":")[0] for line in epochs] == 2 * [
        "pixelcnn epoch 1/2",
        "pixelcnn epoch 2/2",
    ]
