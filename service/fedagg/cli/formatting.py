"""What commands print: JSON documents, tables, ages."""

from __future__ import annotations

import json
from typing import Any


def print_json(document: Any) -> None:
    """One JSON document on one line of stdout."""
    print(json.dumps(document, separators=(",", ":")), flush=True)


def ago(seconds: float) -> str:
    """A duration as "12s ago", "5m ago", "2h 3m ago", "3d 4h ago"."""
    if seconds < 1:
        return "just now"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s ago"
    if whole < 3600:
        return f"{whole // 60}m ago"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m ago"
    return f"{whole // 86400}d {whole % 86400 // 3600}h ago"


def table(rows: list[list[str]], header: list[str]) -> str:
    """A plain text table."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
