"""The Dockerfile: hadolint clean, and the shape the product contract asks for (read statically).

Two ways through one Dockerfile: `docker build .` from a fresh clone (the wheels-index stage builds the wheel and
downloads the dependencies, network needed) and scripts/build-image (WHEELS=wheels-context: wheels downloaded on
the host, `--network none`). The tests build only the second (tests/deploy/test_image.py); the first is checked
here, offline: which stages it builds and that everything they copy is in a fresh clone and in the build context.
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import tomllib
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


def stages(path: Path = DOCKERFILE) -> dict[str, list[tuple[str, str]]]:
    """Stage name (its alias, or its index) -> its instructions, FROM first."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, arguments in instructions(path):
        if keyword == "FROM":
            words = arguments.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(found))
            current = found[name] = []
        if current is not None:
            current.append((keyword, arguments))
    return found


def needed_stages(build_args: dict[str, str], path: Path = DOCKERFILE) -> list[str]:
    """The stages a build of the last stage with ``build_args`` runs (as BuildKit and buildah skip the others)."""
    found = stages(path)
    global_args = {}
    for keyword, arguments in instructions(path):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = arguments.partition("=")
            global_args[name] = build_args.get(name, default)

    def expand(text: str) -> str:
        def value(match: re.Match[str]) -> str:
            return global_args.get(match["name"]) or match["default"] or ""

        return re.sub(r"\$\{(?P<name>\w+)(?::-(?P<default>[^}]*))?\}", value, text)

    needed: list[str] = []

    def visit(name: str) -> None:
        if name in needed or name not in found:
            return
        for keyword, arguments in found[name]:
            if keyword == "FROM":
                visit(expand(arguments.split()[0]))
            elif keyword in ("COPY", "ADD") and (source := re.search(r"--from=(\S+)", arguments)):
                visit(expand(source[1]))
        needed.append(name)

    visit(list(found)[-1])
    return needed


def context_sources(stage: list[tuple[str, str]]) -> list[str]:
    """What a stage's COPY/ADD instructions take from the build context."""
    sources: list[str] = []
    for keyword, arguments in stage:
        if keyword in ("COPY", "ADD") and "--from=" not in arguments:
            words = [word for word in arguments.split() if not word.startswith("--")]
            sources.extend(words[:-1])
    return sources


def docker_ignored(path: str) -> bool:
    """Whether .dockerignore leaves ``path`` out of the build context (last matching pattern wins, ! re-includes)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            ignored = not negated
    return ignored


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


def test_runtime_stage_is_non_root_exec_form_and_exposes_the_charts_ports() -> None:
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
    build = stages()["build"]

    runs = " ".join(arguments for keyword, arguments in build if keyword == "RUN")
    assert "--no-index" in runs
    assert "--find-links=/wheels" in runs
    assert ("COPY", "--from=wheels /wheels/ /wheels/") in build
    assert context_sources(build) == []


def test_the_hermetic_path_copies_the_host_wheels_and_nothing_else() -> None:
    needed = needed_stages({"WHEELS": "wheels-context"})

    assert needed == ["wheels-context", "wheels", "build", str(len(stages()) - 1)]
    assert stages()["wheels-context"][0] == ("FROM", "scratch AS wheels-context")
    assert [source for name in needed for source in context_sources(stages()[name])] == [
        ".cache/image/wheels/"
    ]


def test_a_plain_build_takes_the_network_path() -> None:
    """`docker build .` (no build argument) builds the wheel from the sources and downloads the dependencies."""
    needed = needed_stages({})
    steps = stages()["wheels-index"]
    runs = " ".join(arguments for keyword, arguments in steps if keyword == "RUN")

    assert needed == ["wheels-index", "wheels", "build", str(len(stages()) - 1)]
    assert "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels ." in runs
    assert "--constraint constraints.txt" in runs  # pinned as the hermetic path is
    assert "--only-binary=:all:" in runs  # no compiler: binary wheels only
    assert "/tmp/pip/bin/pip" in runs  # a throwaway venv: the debootstrap stand-in base has no pip of its own


def test_the_network_path_needs_only_files_of_a_fresh_clone() -> None:
    sources = [source for name in needed_stages({}) for source in context_sources(stages()[name])]

    assert sources == ["pyproject.toml", "README.md", "LICENSE", "constraints.txt", "service/"]
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        assert not source.startswith(".cache"), source
        ignored = subprocess.run(
            ["git", "-C", str(ROOT), "check-ignore", "--quiet", source], capture_output=True, check=False
        )
        assert ignored.returncode == 1, f"{source} is git-ignored: a fresh clone lacks it"
        assert not docker_ignored(source.rstrip("/")), f"{source} is left out of the build context"
        if path.is_dir():
            assert not docker_ignored(f"{source}fedagg/__init__.py")
    assert docker_ignored("service/fedagg/__pycache__/cli.cpython-311.pyc")
    assert docker_ignored(".venv/bin/python")
    assert docker_ignored(".git/config")
    assert not docker_ignored(".cache/image/wheels/fedagg-0.1.0-py3-none-any.whl")


def test_the_wheel_stage_is_chosen_by_a_build_argument_with_an_explicit_default() -> None:
    """buildah (podman build) resolves FROM with the --build-arg values only when it skips unused stages, so the
    default must be in the FROM itself; BuildKit reads it there too."""
    global_args = [
        arguments
        for keyword, arguments in instructions()[: instructions().index(stages()["wheels-index"][0])]
        if keyword == "ARG"
    ]

    assert "WHEELS" in global_args  # no default on the ARG
    assert stages()["wheels"] == [("FROM", "${WHEELS:-wheels-index} AS wheels")]


def test_the_only_lint_exceptions_are_the_wheel_stages_labels() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    pragmas = [
        (index, line) for index, line in enumerate(lines) if re.match(r"#\s*hadolint\s+(ignore|global)", line)
    ]

    assert [line for _, line in pragmas] == ["# hadolint ignore=DL3049"] * 2
    assert [lines[index + 1] for index, _ in pragmas] == [
        "FROM ${PYTHON_IMAGE} AS wheels-index",
        "FROM scratch AS wheels-context",
    ]


def test_the_image_version_defaults_follow_the_project() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

    for name in ("build", str(len(stages()) - 1)):
        assert ("ARG", f"VERSION={version}") in stages()[name]
    assert chart_version == version


@pytest.mark.parametrize(
    "label", ["title", "version", "revision", "created", "source", "licenses", "description"]
)
def test_oci_labels_are_set(label: str) -> None:
    labels = " ".join(arguments for keyword, arguments in runtime_stage() if keyword == "LABEL")

    assert f"org.opencontainers.image.{label}=" in labels


def test_the_build_context_is_the_sources_and_the_wheels() -> None:
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]

    assert patterns == [
        "*",
        "!pyproject.toml",
        "!README.md",
        "!LICENSE",
        "!constraints.txt",
        "!service/",
        "service/**/__pycache__",
        "service/**/*.pyc",
        "service/**/*.egg-info",
        "!.cache/image/wheels/",
    ]


def test_the_build_script_builds_offline_from_local_images() -> None:
    script = (ROOT / "scripts" / "build-image").read_text()

    assert "podman build --pull=never --network none --format docker" in script
    assert "--build-arg WHEELS=wheels-context" in script
    assert "--no-index --find-links" in script  # wheels come from the host's cache when it has them
