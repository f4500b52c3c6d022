"""Declaring a sub-command: its summary and examples, and the options every command words the same way."""

from __future__ import annotations

import argparse
from typing import TypeAlias

HelpFormatter = argparse.RawDescriptionHelpFormatter
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

OUTPUT_FORMATS = ("text", "json")


def add_command(
    commands: Commands,
    name: str,
    summary: str,
    examples: str,
    *,
    more: str = "",
) -> argparse.ArgumentParser:
    """A sub-command with its one-line summary and an examples epilog (``more`` is appended to it)."""
    return commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=f"examples:\n{examples}{more}",
        formatter_class=HelpFormatter,
    )


def add_output_option(parser: argparse.ArgumentParser, json_help: str) -> None:
    """``-o/--output text|json``."""
    parser.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default="text",
        help=f"text (default) or json: {json_help}",
    )
