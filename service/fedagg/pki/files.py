"""Writing key and certificate files: never through a symbolic link, a secret with mode 0600."""

from __future__ import annotations

import os
from pathlib import Path


def write_file(
    path: Path, content: bytes, secret: bool = False, exclusive: bool = False, keep: bool = False
) -> None:
    """Write ``path``; a secret is mode 0600 even if the file existed; ``keep`` leaves an existing file."""
    if keep and path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    descriptor = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o600 if secret else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        if secret:
            os.fchmod(file.fileno(), 0o600)
        file.write(content)
