"""The container images and the compose stack. No container engine runs here, so: the files parse,
every path they name exists, they agree with one another and with the service, and the image's own
command line serves from this virtual environment, without torch, until its health check passes."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .deployfiles import (
    DEPLOY,
    DOCKERFILES,
    ROOT,
    SCRAPE_CONFIG,
    dockerfile_instructions,
    exec_form,
    final_stage_by_keyword,
    healthcheck,
    image_command,
    load_yaml,
    option,
)

DOCKER = DEPLOY / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_image_runs_as_a_numeric_non_root_user(variant):
    user = final_stage_by_keyword(variant)["USER"][-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), "numeric, so Kubernetes can enforce runAsNonRoot"
    assert int(uid) != 0
    assert gid.isdigit()
    assert int(gid) != 0


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_image_installs_no_torch(variant):
    text = DOCKERFILES[variant].read_text()
    extras = re.findall(r"pip install[^\n]*'\.\[([a-z,]+)\]'", text)
    assert extras, "the image installs the project with an extra"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras[0].split(","):
        requirements += project["optional-dependencies"][extra]
    assert not [r for r in requirements if re.match(r"torch\b", r)]


def _copied(variant: str) -> list[str]:
    return [
        args.split()[0]
        for keyword, args in dockerfile_instructions(DOCKERFILES[variant])
        if keyword == "COPY" and not args.startswith("--")
    ]


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_image_carries_the_runtime_packages_and_not_training(variant):
    copied = _copied(variant)
    assert {"detectors", "service", "jobs", "normalcy"} <= set(copied)
    assert "training" not in copied


def test_cuda_image_uses_onnxruntime_gpu_pinned_in_constraints():
    assert "'.[gpu]'" in DOCKERFILES["cuda"].read_text()
    assert "'.[cpu]'" in DOCKERFILES["cpu"].read_text()
    pins = dict(
        line.split("==")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert "onnxruntime-gpu" in pins, "the CUDA image must be reproducible too"


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_every_file_the_image_copies_exists_and_is_in_the_build_context(variant):
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, arguments in dockerfile_instructions(DOCKERFILES[variant]):
        if keyword != "COPY" or arguments.startswith("--from"):
            continue
        *sources, _ = arguments.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{variant}: COPY {source}"
            assert source not in ignored, f"{variant}: {source} is in .dockerignore"


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_health_check_probes_readiness_on_the_port_the_service_listens_on(variant):
    final = final_stage_by_keyword(variant)
    command = image_command(variant)
    (url,) = re.findall(r"https?://[^'\"]+", " ".join(healthcheck(variant)))
    assert url == f"http://127.0.0.1:{option(command, '--port')}/v2/health/ready"
    assert final["EXPOSE"] == [option(command, "--port")]
    assert option(command, "--host") == "0.0.0.0"


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_models_come_from_the_volume(variant):
    volume = exec_form(final_stage_by_keyword(variant)["VOLUME"][-1])
    assert volume == [option(image_command(variant), "--models")]


def test_cpu_and_cuda_images_run_the_same_command():
    assert image_command("cpu") == image_command("cuda")
    assert healthcheck("cpu") == healthcheck("cuda")


# --- compose ------------------------------------------------------------------------------------
def _mount(volume: str) -> tuple[str, str]:
    """(source, target) of a compose volume, ${VAR:-default} read as its default."""
    source, target, *_ = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", volume).split(":")
    return source, target


def test_compose_has_the_service_prometheus_and_grafana():
    services = load_yaml(COMPOSE)["services"]
    assert set(services) == {"normalcy", "prometheus", "grafana"}


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_GPU], ids=lambda p: p.name)
def test_every_path_the_compose_files_name_exists(path):
    from normalcy.cli import build_parser

    demo_out = build_parser().parse_args(["demo"]).out
    for name, service in load_yaml(path)["services"].items():
        if "build" in service:
            context = DOCKER / service["build"]["context"]
            assert context.resolve() == ROOT
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source, _ = _mount(volume)
            if not source.startswith("."):
                continue  # a named volume
            if name == "normalcy":
                # `make demo` writes the bundles the stack serves by default.
                assert (DOCKER / source).resolve() == (ROOT / demo_out).resolve()
            else:
                assert (DOCKER / source).exists(), f"{name}: {volume}"


def test_compose_gives_the_service_time_to_drain(tmp_path):
    from service.settings import Settings

    grace = load_yaml(COMPOSE)["services"]["normalcy"]["stop_grace_period"]
    assert grace.endswith("s")
    assert float(grace[:-1]) > Settings(models_dir=tmp_path).shutdown_timeout_s


def test_compose_publishes_the_port_the_image_listens_on():
    service = load_yaml(COMPOSE)["services"]["normalcy"]
    port = option(image_command(), "--port")
    assert f"{port}:{port}" in service["ports"]
    models_dir = option(image_command(), "--models")
    (models,) = [v for v in service["volumes"] if _mount(v)[1] == models_dir]
    assert models.endswith(":ro"), "the service never writes its models"


def test_compose_prometheus_loads_this_config_and_scrapes_the_service():
    prometheus = load_yaml(COMPOSE)["services"]["prometheus"]
    mounts = dict(_mount(volume) for volume in prometheus["volumes"])
    assert (DOCKER / "../prometheus").resolve() == SCRAPE_CONFIG.parent
    assert (
        "--config.file=" + mounts["../prometheus"] + "/" + SCRAPE_CONFIG.name
        in prometheus["command"]
    )
    (job,) = [j for j in load_yaml(SCRAPE_CONFIG)["scrape_configs"] if j["job_name"] == "normalcy"]
    (target,) = job["static_configs"][0]["targets"]
    assert target == f"normalcy:{option(image_command(), '--port')}"


def test_gpu_override_builds_the_cuda_image_and_reserves_a_gpu():
    service = load_yaml(COMPOSE_GPU)["services"]["normalcy"]
    assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile.cuda"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]


def test_compose_env_example_holds_only_real_settings():
    from service.settings import Settings

    lines = (DOCKER / "normalcy.env.example").read_text().splitlines()
    values = dict(
        line.lstrip("# ").split("=", 1) for line in lines if re.match(r"#? ?NORMALCY_", line)
    )
    fields = {f"NORMALCY_{name.upper()}" for name in Settings.model_fields}
    assert set(values) - fields == set()


# --- the image's command, run here ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local(argv: list[str], port: int, models: Path) -> list[str]:
    """The image's command line for this machine: the venv's scripts, loopback, a free port."""
    bin_dir = Path(sys.executable).parent
    replace = {"0.0.0.0": "127.0.0.1", "8000": str(port), "/models": str(models)}
    local = [replace.get(arg, arg) for arg in argv]
    if (bin_dir / local[0]).exists():
        local[0] = str(bin_dir / local[0])
    return [re.sub(r"127\.0\.0\.1:8000", f"127.0.0.1:{port}", arg) for arg in local]


def _image_distributions(extras: list[str]) -> set[str]:
    """Canonical names of every distribution `pip install '.[extras]'` brings, dependencies too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [(Requirement(r), "") for r in project["dependencies"]]
    todo += [(Requirement(r), "") for e in extras for r in project["optional-dependencies"][e]]
    found: set[str] = set()
    while todo:
        requirement, extra = todo.pop()
        name = canonicalize_name(requirement.name)
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # not installed here (onnxruntime-gpu): nothing of it to block either
        for wanted in [""] + sorted(requirement.extras):
            todo += [(Requirement(r), wanted) for r in requires]
    return found


def _modules_not_in_image(extras: list[str]) -> list[str]:
    """Top-level modules installed here by the other extras (torch, onnx, ray, pyarrow, ...)."""
    keep = _image_distributions(extras)
    modules = set()
    for module, dists in metadata.packages_distributions().items():
        if module.isidentifier() and not {canonicalize_name(d) for d in dists} & keep:
            modules.add(module)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    other = {
        canonicalize_name(Requirement(r).name)
        for e, reqs in project["optional-dependencies"].items()
        if e not in extras
        for r in reqs
    }
    return sorted(
        m
        for m in modules
        if {canonicalize_name(d) for d in metadata.packages_distributions()[m]} & other
    )


def _image_env(tmp_path: Path) -> dict[str, str]:
    """This environment as the CPU image has it: the image has only the base and cpu
    requirements and the packages it copies, so the other extras' top-level modules (torch, onnx,
    pyarrow, ray, ...) and the packages it leaves out (training) are made unimportable."""
    blocked = _modules_not_in_image(["cpu"])
    assert "torch" in blocked
    blocked += [p for p in ("detectors", "training", "service", "jobs", "normalcy")
                if p not in _copied("cpu")]  # fmt: skip
    assert "training" in blocked
    blockers = tmp_path / "not-in-image"
    for module in blocked:
        (blockers / module).mkdir(parents=True)
        (blockers / module / "__init__.py").write_text(
            f"raise ImportError('{module} is not in the serving image')\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMALCY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(blockers), env.get("PYTHONPATH")]))
    return env


def test_image_command_serves_without_torch_until_its_health_check_passes(vae_bundle, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "digits.onnx").write_bytes(Path(vae_bundle).read_bytes())
    env = _image_env(tmp_path)
    port = _free_port()
    command = _local(image_command(), port, models)
    check = _local(healthcheck(), port, models)
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"{shlex.join(command)} exited:\n{server.stdout.read()}"
            probe = subprocess.run(check, env=env, capture_output=True, timeout=30, check=False)
            if probe.returncode == 0:
                break
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.5)
    finally:
        server.terminate()
        output = server.communicate(timeout=60)[0]
    # Uvicorn drains, then re-raises SIGTERM: what Docker and Kubernetes expect of a clean stop.
    assert server.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    assert "not in the serving image" not in output


def test_image_scores_a_folder_with_its_own_command(vae_bundle, digits_test, tmp_path):
    """`normalcy score` runs in the image too: jobs, detectors and the command line, no torch."""
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(digits_test.images[:5]):
        Image.fromarray(image[0]).save(folder / f"{i}.png")
    normalcy = _local(image_command(), _free_port(), tmp_path)[0]
    out = tmp_path / "results.csv"
    argv = [normalcy, "score", str(vae_bundle), str(folder), "--out", str(out), "--no-progress"]
    env = _image_env(tmp_path)
    run = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert len(out.read_text().splitlines()) == 1 + 5
