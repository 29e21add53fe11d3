"""The Ray engine of `normalcy score` on a local Ray with 2 CPUs: the same rows as the local engine,
and it resumes the same journal. Slow (Ray starts in seconds); needs the `ray` extra."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from PIL import Image

from detectors.bundle import Bundle
from jobs.score import ScoreJob, _identity

from .cli import score

pytestmark = pytest.mark.slow
BATCH = ("--batch-size", "16")


@pytest.fixture
def ray_installed():
    pytest.importorskip(
        "ray",
        reason="the Ray engine needs the ray extra: `make test-slow` "
        "installs it (pip install -e '.[ray]')",
    )


@pytest.fixture
def inputs(tmp_path, digits_test):
    """60 PNGs in two sub-folders and an unreadable one, a .npy of 50 and a gzipped IDX of 30."""
    images = digits_test.images
    folder = tmp_path / "pngs"
    for i, image in enumerate(images[:60]):
        (folder / str(i % 2)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / str(i % 2) / f"{i:03d}.png")
    (folder / "junk.png").write_bytes(b"not an image")
    np.save(tmp_path / "arr.npy", images[60:110])
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (30, 8, 8))
    idx = gzip.compress(header + images[110:140, 0].tobytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(idx)
    return [str(folder), str(tmp_path / "arr.npy"), str(tmp_path / "t10k-images-idx3-ubyte.gz")]


def test_ray_engine_writes_the_same_rows_as_the_local_engine(
    ray_installed, vae_bundle, inputs, tmp_path, capsys
):
    local = score(vae_bundle, inputs, tmp_path / "local.parquet", *BATCH, "--engine", "local")
    capsys.readouterr()
    on_ray = score(
        vae_bundle, inputs, tmp_path / "ray.parquet", *BATCH, "--engine", "ray", "--ray-cpus", "2"
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == "ray"
    assert summary["ray_actors"] == 1
    assert len(on_ray) == 141
    assert sum(row["error"] is not None for row in on_ray) == 1
    assert on_ray == local
    assert not (tmp_path / "ray.parquet.work").exists()


def test_ray_engine_resumes_a_journal_the_local_engine_started(
    ray_installed, vae_bundle, inputs, tmp_path
):
    full = score(vae_bundle, inputs, tmp_path / "local.csv", *BATCH, "--engine", "local")
    out = tmp_path / "resumed.csv"
    work = tmp_path / "resumed.csv.work"
    work.mkdir()
    bundle = Bundle.read(vae_bundle)
    identity = _identity(
        ScoreJob(str(vae_bundle), inputs, str(out)), bundle, bundle.spec.default_score
    )
    (work / "job.json").write_text(json.dumps(identity))
    fields = ("input", "index", "score", "p_value", "error")
    done = [{k: row[k] for k in fields} for row in full[:45]]
    (work / "journal.jsonl").write_text("".join(json.dumps(row) + "\n" for row in done))
    rows = score(vae_bundle, inputs, out, *BATCH, "--engine", "ray", "--ray-cpus", "2", "--resume")
    assert rows == full
