"""Service fixtures: a model folder with the tiny session bundles, in-process apps, servers."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings


@pytest.fixture
def model_dir(tmp_path, pixelcnn_bundle, vae_bundle) -> Path:
    """A fresh model folder holding pixelcnn.onnx and vae.onnx."""
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(pixelcnn_bundle, folder / "pixelcnn.onnx")
    shutil.copy(vae_bundle, folder / "vae.onnx")
    return folder


@pytest.fixture
def make_client(model_dir):
    """make_client(**settings) -> a started TestClient (lifespan run) on the model folder."""
    clients = []

    def make(**overrides) -> TestClient:
        settings = Settings(**{"models_dir": model_dir, "watch_interval_s": 0, **overrides})
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def digit_images(digits_test) -> np.ndarray:
    """Eight 8x8 grey digits, uint8 (8, 1, 8, 8)."""
    return digits_test.images[:8]


def _png_bytes(image: np.ndarray) -> bytes:
    array = image[0] if image.ndim == 3 and image.shape[0] == 1 else image
    if array.ndim == 3:
        array = np.moveaxis(array, 0, -1)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def png():
    """png(image) -> PNG bytes of a uint8 (1, H, W), (3, H, W) or (H, W) image."""
    return _png_bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `normalcy serve` process on a loopback port."""

    def __init__(self, models: Path, log_path: Path, env: dict[str, str] | None = None, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        script = Path(sys.executable).with_name("normalcy")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "normalcy.cli"]
        command += [
            "serve",
            "--models",
            str(models),
            "--port",
            str(self.port),
            "--device",
            "cpu",
            *args,
        ]
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"normalcy serve exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/v2/health/live", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"normalcy serve did not come up in {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    """start_server(models_dir, env=None, *flags) -> Server; every server is stopped afterwards."""
    servers: list[Server] = []

    def start(models: Path, env: dict[str, str] | None = None, *flags: str) -> Server:
        server = Server(models, tmp_path / f"server{len(servers)}.log", env, *flags)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
