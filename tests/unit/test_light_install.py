"""``pip install fedagg`` without the server extra still runs collaborators and the client-side commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from fedagg.federation.store import publish_model

SERVER_ONLY = ("grpc_health", "grpc_reflection", "prometheus_client", "kubernetes", "yaml", "cryptography")


def blocker(missing: tuple[str, ...]) -> str:
    """Python that makes the modules in ``missing`` uninstalled for the rest of the program."""
    return f"""
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {missing!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (extra not installed)", name=name)
sys.meta_path.insert(0, Missing())
"""


def run_without_server_extra(
    code: str, missing: tuple[str, ...] = SERVER_ONLY
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", blocker(missing) + code],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_the_collaborator_library_imports_without_server_dependencies() -> None:
    result = run_without_server_extra(
        "import fedagg.collaborator, fedagg.collaborator.reference; print(fedagg.collaborator.Collaborator)"
    )

    assert result.returncode == 0, result.stderr


def test_client_side_commands_run_without_server_dependencies(tmp_path: Path) -> None:
    publish_model(tmp_path / "m.pbuf", {"w": np.ones(3, np.float32)}, 2)
    main = "from fedagg.cli import main; sys.exit(main(sys.argv[1:]))"

    helps = [
        run_without_server_extra(f"sys.argv[1:] = ['{command}', '--help']\n" + main)
        for command in ("collaborator", "status", "metrics")
    ]
    shown = run_without_server_extra(
        f"sys.argv[1:] = ['model', 'show', {str(tmp_path / 'm.pbuf')!r}]\n" + main
    )
    serve = run_without_server_extra("sys.argv[1:] = ['serve', '--config', 'x.yaml']\n" + main)

    assert [result.returncode for result in helps] == [0, 0, 0], [r.stderr for r in helps]
    assert "round 2, 1 tensors" in shown.stdout, shown.stderr
    assert serve.returncode == 2
    assert "serve needs the aggregator's dependencies: pip install 'fedagg[server] @ file://" in serve.stderr


MAIN = "from fedagg.cli import main; sys.exit(main(sys.argv[1:]))"


def test_a_site_creates_its_key_and_request_with_cryptography_alone(tmp_path: Path) -> None:
    site_only = tuple(module for module in SERVER_ONLY if module != "cryptography")

    requested = run_without_server_extra(
        f"sys.argv[1:] = ['certs', 'request', '--name', 'site-a', '--out', {str(tmp_path / 'a')!r}]\n" + MAIN,
        site_only,
    )
    bare = run_without_server_extra(
        f"sys.argv[1:] = ['certs', 'request', '--name', 'site-b', '--out', {str(tmp_path / 'b')!r}]\n" + MAIN
    )

    assert requested.returncode == 0, requested.stderr
    assert sorted(path.name for path in (tmp_path / "a").iterdir()) == ["site-a.csr", "tls.key"]
    assert bare.returncode == 2
    assert (
        "certs needs a collaborator site's dependencies: pip install 'fedagg[site] @ file://" in bare.stderr
    )
