"""Hostile YAML: small documents that would cost minutes to walk."""

from __future__ import annotations

LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
)
"""Billion laughs: 9 lines, 9^9 (387 million) strings once the aliases are expanded."""
