"""The Dockerfile: hadolint clean, and the shape the product contract asks for (read statically)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy import tools
from tests.deploy.chart import CHART, ROOT

DOCKERFILE = ROOT / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def runtime_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def run_hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tools.hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_finds_nothing() -> None:
    result = run_hadolint(DOCKERFILE)

    assert json.loads(result.stdout or "[]") == []
    assert result.returncode == 0


def test_hadolint_would_catch_a_missing_label(tmp_path: Path) -> None:
    """The configuration is in force: dropping an OCI label fails the lint."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        DOCKERFILE.read_text().replace('org.opencontainers.image.revision="${REVISION}" \\\n', "")
    )

    result = run_hadolint(broken)

    assert result.returncode != 0
    assert "DL3049" in result.stdout  # label is missing


def test_runtime_stage_is_non_root_exec_form_and_exposes_the_three_ports() -> None:
    steps = runtime_stage()
    keywords = dict(steps)
    chart_ports = yaml.safe_load((CHART / "values.yaml").read_text())["containerPorts"]

    assert keywords["USER"] == "10001:10001"
    assert json.loads(keywords["ENTRYPOINT"]) == ["/opt/fedagg/bin/fedagg"]
    assert json.loads(keywords["CMD"]) == ["serve", "--config", "/etc/fedagg/fedagg.yaml"]
    assert set(keywords["EXPOSE"].split()) == {f"{port}/tcp" for port in chart_ports.values()}
    assert keywords["HEALTHCHECK"].endswith(
        'CMD ["/opt/fedagg/bin/fedagg", "health", "--address", "localhost:50052", "--timeout", "3"]'
    )
    assert keywords["STOPSIGNAL"] == "SIGTERM"


def test_the_runtime_stage_installs_no_compiler_and_copies_only_the_venv() -> None:
    steps = runtime_stage()

    runs = " ".join(arguments for keyword, arguments in steps if keyword == "RUN")
    copies = [arguments for keyword, arguments in steps if keyword in ("COPY", "ADD")]
    assert not re.search(r"apt-get|apt |pip |gcc|build-essential|python3-dev", runs)
    assert copies == ["--from=build /opt/fedagg /opt/fedagg"]


def test_the_build_installs_only_local_wheels() -> None:
    build = instructions()[: instructions().index(runtime_stage()[0])]

    runs = " ".join(arguments for keyword, arguments in build if keyword == "RUN")
    assert "--no-index" in runs
    assert "--find-links=/wheels" in runs
    assert ("COPY", ".cache/image/wheels/ /wheels/") in build


@pytest.mark.parametrize(
    "label", ["title", "version", "revision", "created", "source", "licenses", "description"]
)
def test_oci_labels_are_set(label: str) -> None:
    labels = " ".join(arguments for keyword, arguments in runtime_stage() if keyword == "LABEL")

    assert f"org.opencontainers.image.{label}=" in labels


def test_the_build_context_is_only_the_wheels() -> None:
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]

    assert patterns == ["*", "!.cache/image/wheels/"]


def test_the_build_script_builds_offline_from_local_images() -> None:
    script = (ROOT / "scripts" / "build-image").read_text()

    assert "podman build --pull=never --network none --format docker" in script
    assert "--no-index --find-links" in script  # wheels come from the host's cache when it has them
