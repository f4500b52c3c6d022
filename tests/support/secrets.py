"""A directory laid out exactly as the kubelet mounts a Secret, with atomic rotation."""

from __future__ import annotations

import os
from pathlib import Path

FILES = ("tls.crt", "tls.key", "ca.crt")


class MountedSecret:
    """``dir/..data -> ..<version>/`` and ``dir/<file> -> ..data/<file>``, swapped atomically like the kubelet."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._versions = 0

    def publish(self, files: dict[str, bytes]) -> None:
        """Write a new version and switch ``..data`` to it in one rename."""
        self._versions += 1
        version = self.directory / f"..2026_11_28_00_00_{self._versions:02d}.000000001"
        version.mkdir()
        for name, content in files.items():
            (version / name).write_bytes(content)
        link = self.directory / "..data_tmp"
        os.symlink(version.name, link)
        os.replace(link, self.directory / "..data")
        for name in files:
            target = self.directory / name
            if not target.is_symlink():
                os.symlink(f"..data/{name}", target)
