"""Names that become a certificate's CN, a SAN or a file name: checked before anything is issued or written."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from fedagg.pki.errors import InvalidName

NAME_MAX_LENGTH = 64  # RFC 5280's upper bound for a common name (ub-common-name)
HOST_MAX_LENGTH = 253  # the longest DNS name
NAME_RULE = (
    "letters, digits, '.', '_' and '-', starting and ending with a letter or digit, "
    f"no '..', at most {NAME_MAX_LENGTH} characters"
)
HOST_RULE = (
    "an IP address, or a DNS name of letters, digits and '-' in dot-separated labels "
    f"(at most {HOST_MAX_LENGTH} characters)"
)
SECRET_NAME_RULE = "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"
_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_NAME_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SECRET_NAME = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")


def check_name(name: str, kind: str = "collaborator") -> str:
    """``name`` if it may be a collaborator's (or observer's) CN and a file name; else :class:`InvalidName`.

    Allowed: ASCII letters, digits, ``.``, ``_`` and ``-``, starting and ending with a letter or digit, no
    ``..``, at most 64 characters. So no path separators, no ``..``, nothing empty or hidden, nothing an
    option parser or a shell would read differently.
    """
    reason = ""
    if not name:
        reason = "it is empty"
    elif len(name) > NAME_MAX_LENGTH:
        reason = f"it has {len(name)} characters"
    elif "/" in name or "\\" in name:
        reason = "it contains a path separator"
    elif ".." in name:
        reason = "it contains '..'"
    elif bad := [character for character in name if character not in _NAME_CHARACTERS]:
        reason = f"it contains {bad[0]!r}"
    elif not _NAME.fullmatch(name):
        reason = "it does not start and end with a letter or digit"
    if reason:
        raise InvalidName(kind, name, f"{reason} (allowed: {NAME_RULE})")
    return name


def check_names(names: Sequence[str], kind: str = "collaborator") -> list[str]:
    """Every name checked by :func:`check_name`, and none given twice (ignoring case: one directory each)."""
    seen: dict[str, str] = {}
    for name in names:
        check_name(name, kind)
        if name.lower() in seen:
            raise InvalidName(
                kind,
                name,
                f"given twice (as {seen[name.lower()]!r} already; names differing only in case would "
                "share a directory)",
                valid=True,
            )
        seen[name.lower()] = name
    return list(names)


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a DNS name fit for a SAN and a file name; else :class:`InvalidName`."""
    reason = ""
    if not host:
        reason = "it is empty"
    elif "/" in host or "\\" in host:
        reason = "it contains a path separator"
    elif ".." in host:
        reason = "it contains '..'"
    elif "%" in host:
        reason = "it contains '%' (a scoped IPv6 address)"
    else:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return host
        if len(host) > HOST_MAX_LENGTH:
            reason = f"it has {len(host)} characters"
        else:
            bad = next((label for label in host.split(".") if not _DNS_LABEL.fullmatch(label)), None)
            if bad is not None:
                reason = f"its label {bad!r} is not letters, digits and '-' (1 to 63, no '-' at either end)"
    if reason:
        raise InvalidName("host", host, f"{reason} (allowed: {HOST_RULE})")
    return host


def check_secret_name(name: str) -> str:
    """``name`` if it is a valid Kubernetes Secret name (it also names the manifest file)."""
    if len(name) > HOST_MAX_LENGTH or not _SECRET_NAME.fullmatch(name):
        raise InvalidName(
            "Kubernetes Secret", name, f"it is not a Kubernetes object name (allowed: {SECRET_NAME_RULE})"
        )
    return name
