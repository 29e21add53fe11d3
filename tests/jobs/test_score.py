"""`normalcy score`: every input scored exactly once, bad files as error rows, resumable after
SIGKILL and Ctrl-C, the same rows in every output format and from every decoding set-up."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detectors import Detector
from detectors.bundle import Bundle, write_bundle
from detectors.calibration import benjamini_hochberg
from jobs.ray_engine import MAX_TEMP_DIR_CHARS, ray_temp_dir
from jobs.results import read_results
from jobs.score import ScoreJob, run
from normalcy.cli import main

from .cli import score

REPO = Path(__file__).resolve().parents[2]


def write_pngs(folder: Path, images: np.ndarray, *, start: int = 0) -> list[Path]:
    """One PNG per (1, H, W) image, spread over two nested sub-folders."""
    paths = []
    for i, image in enumerate(images, start):
        sub = folder / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{i:05d}.png"
        Image.fromarray(image[0]).save(path)
        paths.append(path)
    return paths


def write_idx_gz(path: Path, images: np.ndarray) -> None:
    n, _, h, w = images.shape
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, h, w))
    path.write_bytes(gzip.compress(header + images[:, 0].tobytes()))


@pytest.fixture
def inputs(tmp_path, digits_test):
    """A folder of 40 PNGs, a .npy of 30 images and a gzipped IDX file of 20 images."""
    images = digits_test.images
    write_pngs(tmp_path / "pngs", images[:40])
    np.save(tmp_path / "arr.npy", images[40:70])
    write_idx_gz(tmp_path / "t10k-images-idx3-ubyte.gz", images[70:90])
    return tmp_path, images[:90]


def keys(rows):
    return [(row["input"], row["index"]) for row in rows]


def test_every_input_is_scored_once_with_the_detectors_scores(vae_bundle, inputs, tmp_path):
    folder, images = inputs
    out = tmp_path / "results.csv"
    specs = [folder / "pngs", folder / "arr.npy", folder / "t10k-images-idx3-ubyte.gz"]
    rows = score(vae_bundle, specs, out)
    assert len(rows) == 90 == len(set(keys(rows)))
    assert all(row["error"] is None for row in rows)
    # The PNG rows come in walking order (a/ before b/c/), arrays in row order.
    png_rows = rows[:40]
    order = [int(Path(row["input"]).stem) for row in png_rows]
    expected = Detector.load(vae_bundle).score(images[order + list(range(40, 90))])
    np.testing.assert_allclose([row["score"] for row in rows], expected.scores, rtol=1e-6)
    np.testing.assert_allclose([row["p_value"] for row in rows], expected.p_values)
    assert [row["is_anomaly"] for row in rows] == expected.is_anomaly.tolist()
    assert [row["index"] for row in rows[40:70]] == list(range(30))
    assert not (tmp_path / "results.csv.work").exists()  # a finished job leaves no work area


def test_unreadable_inputs_are_error_rows_and_the_rest_is_scored(vae_bundle, digits_test, tmp_path):
    folder = tmp_path / "pngs"
    write_pngs(folder, digits_test.images[:10])
    (folder / "junk.png").write_bytes(b"not an image at all")
    (folder / "empty.png").write_bytes(b"")
    good = (folder / "a" / "00001.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    bad_values = digits_test.images[:3].astype(np.float32)
    bad_values[1, 0, 0, 0] = 300.0  # out of 0..255: this row only is refused
    np.save(tmp_path / "floats.npy", bad_values)
    np.save(tmp_path / "objects.npy", np.array([1, "x"], dtype=object), allow_pickle=True)
    out = tmp_path / "results.jsonl"
    specs = [folder, tmp_path / "floats.npy", tmp_path / "objects.npy"]
    summary_rows = score(vae_bundle, specs, out)
    errors = {(Path(r["input"]).name, r["index"]): r["error"] for r in summary_rows if r["error"]}
    assert set(errors) == {
        ("junk.png", None),
        ("empty.png", None),
        ("truncated.png", None),
        ("floats.npy", 1),
        ("objects.npy", None),
    }
    assert "empty file" in errors[("empty.png", None)]
    assert "truncated" in errors[("truncated.png", None)]
    assert "0..255" in errors[("floats.npy", 1)]
    scored = [r for r in summary_rows if r["error"] is None]
    assert len(scored) == 10 + 2
    assert all(r["score"] is not None and r["is_anomaly"] is not None for r in scored)
    assert all(
        r["score"] is None and r["p_value"] is None and r["is_anomaly"] is None
        for r in summary_rows
        if r["error"]
    )


def test_images_of_another_size_or_mode_follow_the_bundles_preprocessing(vae_bundle, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(folder / "rgb16.png")
    rows = score(vae_bundle, [folder], tmp_path / "converted.csv")
    assert rows[0]["error"] is None  # resized and converted to grey, as the bundle allows

    bundle = Bundle.read(vae_bundle)
    refuse = replace(bundle.spec.preprocessing, resize="refuse", color="refuse")
    strict = tmp_path / "strict.onnx"
    write_bundle(bundle.model_bytes, replace(bundle.spec, preprocessing=refuse), strict)
    rows = score(strict, [folder], tmp_path / "refused.csv")
    assert "colour mode" in rows[0]["error"] or "size" in rows[0]["error"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_every_format_holds_the_same_rows_as_csv(vae_bundle, inputs, tmp_path, suffix):
    folder, _ = inputs
    csv_rows = score(vae_bundle, [folder / "pngs", folder / "arr.npy"], tmp_path / "r.csv")
    other = score(vae_bundle, [folder / "pngs", folder / "arr.npy"], tmp_path / f"r{suffix}")
    assert other == csv_rows


def test_fdr_adds_benjamini_hochberg_q_values_and_decides_by_them(vae_bundle, inputs, tmp_path):
    folder, _ = inputs
    rows = score(vae_bundle, [folder / "pngs"], tmp_path / "r.parquet", "--fdr", "0.2")
    p_values = np.array([row["p_value"] for row in rows])
    q_values = np.array([row["q_value"] for row in rows])
    np.testing.assert_allclose(q_values, benjamini_hochberg(p_values))
    assert [row["is_anomaly"] for row in rows] == (q_values <= 0.2).tolist()


def test_decoding_in_processes_or_a_thread_gives_the_same_rows(vae_bundle, inputs, tmp_path):
    folder, _ = inputs
    specs = [folder / "pngs", folder / "arr.npy", folder / "t10k-images-idx3-ubyte.gz"]
    threaded = score(vae_bundle, specs, tmp_path / "t.csv", "--workers", "0", "--batch-size", "7")
    processes = score(vae_bundle, specs, tmp_path / "p.csv", "--workers", "2", "--batch-size", "16")
    assert threaded == processes


def test_overlapping_inputs_score_a_file_once(vae_bundle, inputs, tmp_path):
    folder, _ = inputs
    rows = score(
        vae_bundle,
        [
            folder / "pngs",
            str(folder / "pngs" / "a" / "*.png"),
            folder / "arr.npy",
            f"npy:{folder / 'arr.npy'}",
        ],
        tmp_path / "r.csv",
    )
    assert len(rows) == 70 == len(set(keys(rows)))


def test_a_missing_input_is_an_error_row_and_the_job_goes_on(vae_bundle, inputs, tmp_path):
    folder, _ = inputs
    missing, no_match = tmp_path / "missing.png", tmp_path / "nothing" / "*.png"
    specs = [folder / "pngs", missing, f"npy:{tmp_path / 'gone.npy'}", no_match, missing]
    rows = score(vae_bundle, specs, tmp_path / "r.csv")
    errors = {row["input"]: row["error"] for row in rows if row["error"]}
    assert len(rows) == 40 + 3  # the missing file listed twice is one row
    assert errors == {
        str(missing): f"{missing}: no such file or directory",
        str(tmp_path / "gone.npy"): f"{tmp_path / 'gone.npy'}: no such file or directory",
        str(no_match): f"{no_match}: the pattern matches no files",
    }
    assert all(row["score"] is not None for row in rows if not row["error"])


def test_bad_options_fail_before_any_work(vae_bundle, tmp_path, capsys):
    out = tmp_path / "r.csv"
    assert main(["score", str(vae_bundle), str(tmp_path), "--out", str(tmp_path / "r.xlsx")]) == 2
    assert main(["score", str(vae_bundle), str(tmp_path), "--out", str(out), "--score", "x"]) == 2
    assert "unknown score" in capsys.readouterr().err
    assert not out.exists()


# --- interruption and resumption ------------------------------------------------------------------
@pytest.fixture
def big_inputs(tmp_path, digits_test):
    """Enough inputs that a job with small batches runs for a few seconds: 300 PNGs, 6,000 rows."""
    write_pngs(tmp_path / "pngs", digits_test.images[:300])
    np.save(tmp_path / "many.npy", np.tile(digits_test.images, (14, 1, 1, 1))[:6000])
    return [tmp_path / "pngs", tmp_path / "many.npy"]


def start_job(bundle, specs, out, *extra) -> subprocess.Popen:
    argv = [
        sys.executable,
        "-m",
        "normalcy.cli",
        "score",
        str(bundle),
        *map(str, specs),
        "--out",
        str(out),
        "--no-progress",
        "--batch-size",
        "4",
        "--workers",
        "1",
        *extra,
    ]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_rows(journal: Path, process: subprocess.Popen, rows: int, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_bytes().count(b"\n") >= rows:
            return
        if process.poll() is not None:
            pytest.fail(f"the job ended before it was interrupted: {process.communicate()}")
        time.sleep(0.01)
    pytest.fail("the job wrote no results in time")


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has finished


def test_a_job_killed_with_sigkill_resumes_and_scores_each_input_once(
    vae_bundle, big_inputs, tmp_path
):
    out = tmp_path / "results.csv"
    journal = tmp_path / "results.csv.work" / "journal.jsonl"
    process = start_job(vae_bundle, big_inputs, out)
    wait_for_rows(journal, process, 40)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert children  # the decoding process
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    assert not out.exists()
    deadline = time.monotonic() + 10
    while any(running(int(pid)) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(running(int(pid)) for pid in children), "decoders outlived the killed job"
    done_before = journal.read_bytes().count(b"\n")
    assert 40 <= done_before < 6300

    # Starting again without --resume refuses to throw the work away.
    again = start_job(vae_bundle, big_inputs, out)
    assert again.wait() == 2
    assert b"--resume" in again.communicate()[1]

    resumed = start_job(vae_bundle, big_inputs, out, "--resume")
    assert resumed.wait() == 0, resumed.communicate()
    summary = json.loads(resumed.communicate()[0])
    assert summary["processed_this_run"] == 6300 - done_before
    rows = read_results(out)
    assert len(rows) == 6300 == len(set(keys(rows)))
    assert all(row["error"] is None for row in rows)

    uninterrupted = score(vae_bundle, big_inputs, tmp_path / "straight.csv")
    assert rows == uninterrupted  # same rows, same order


def test_ctrl_c_stops_cleanly_keeping_what_was_scored(vae_bundle, big_inputs, tmp_path):
    out = tmp_path / "results.jsonl"
    journal = tmp_path / "results.jsonl.work" / "journal.jsonl"
    process = start_job(vae_bundle, big_inputs, out)
    wait_for_rows(journal, process, 40)
    process.send_signal(signal.SIGINT)
    stdout, stderr = (stream.decode() for stream in process.communicate(timeout=60))
    assert process.returncode == 130
    assert "Traceback" not in stderr
    assert "stopping after this batch" in stderr
    assert "--resume" in stderr
    assert json.loads(stdout)["complete"] is False  # stdout holds the JSON summary and nothing else
    partial = read_results(out)  # what was scored is written out, and kept for --resume
    assert 40 <= len(partial) < 6300
    assert journal.read_bytes().count(b"\n") == len(partial)

    resumed = start_job(vae_bundle, big_inputs, out, "--resume")
    assert resumed.wait() == 0, resumed.communicate()
    rows = read_results(out)
    assert len(rows) == 6300 == len(set(keys(rows)))
    assert rows[: len(partial)] == partial


def test_a_torn_journal_line_is_cut_off_and_that_input_rescored(vae_bundle, inputs, tmp_path):
    folder, _ = inputs
    out = tmp_path / "results.csv"
    specs = [str(folder / "pngs")]
    full = score(vae_bundle, specs, out)
    # The state a kill in the middle of a write leaves: 10 whole lines and half of the 11th.
    work = tmp_path / "results.csv.work"
    work.mkdir()
    from jobs.score import _identity

    bundle = Bundle.read(vae_bundle)
    job = ScoreJob(str(vae_bundle), specs, str(out))
    identity = _identity(job, bundle, bundle.spec.default_score)
    (work / "job.json").write_text(json.dumps(identity))
    lines = [
        json.dumps({k: r[k] for k in ("input", "index", "score", "p_value", "error")}) + "\n"
        for r in full
    ]
    (work / "journal.jsonl").write_text("".join(lines[:10]) + lines[10][:25])
    summary = run(ScoreJob(str(vae_bundle), specs, str(out), resume=True, progress=False))
    assert summary["processed_this_run"] == 30
    assert read_results(out) == full


def test_resume_refuses_the_work_area_of_another_bundle(vae_bundle, inputs, tmp_path):
    folder, _ = inputs
    out = tmp_path / "r.csv"
    job = ScoreJob(str(vae_bundle), [str(folder / "pngs")], str(out), progress=False)
    # Leave an interrupted job's work area, then resume it with a re-calibrated bundle.
    bundle = Bundle.read(vae_bundle)
    calibration = replace(bundle.spec.calibration, alpha=0.05)
    other = write_bundle(
        bundle.model_bytes, replace(bundle.spec, calibration=calibration), tmp_path / "other.onnx"
    )
    work = tmp_path / "r.csv.work"
    work.mkdir()
    from jobs.score import _identity

    identity = _identity(job, bundle, bundle.spec.default_score)
    (work / "job.json").write_text(json.dumps(identity))
    (work / "journal.jsonl").write_text('{"input": "x", "index": null}\n')
    with pytest.raises(ValueError, match="another job"):
        run(ScoreJob(other.path, [str(folder / "pngs")], str(out), resume=True, progress=False))


def test_batch_scoring_never_imports_torch():
    code = (
        "import sys, jobs.score, jobs.ray_engine, normalcy.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_ray_temporary_directory_lies_in_the_work_area_and_fits_unix_sockets(tmp_path):
    # Ray itself is not needed: this is where the engine tells it to put its files.
    work = tmp_path / ("deeply-nested-work-area-" * 3) / "results.csv.work"
    path, link = ray_temp_dir(work)
    assert len(path) <= MAX_TEMP_DIR_CHARS
    assert Path(os.path.realpath(path)) == (work / "ray").resolve()
    link.unlink()
