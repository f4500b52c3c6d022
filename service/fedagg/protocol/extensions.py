"""fedagg's additions to OpenFL's protocol: optional, and ignored by OpenFL's own clients."""

from __future__ import annotations

CONTRIBUTION_METADATA = "fedagg-contribution"
"""Trailing metadata on an upload answered OK but not used: ``rejected:<reason>`` or ``ignored:<reason>``."""
