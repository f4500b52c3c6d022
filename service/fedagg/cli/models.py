"""``fedagg model``: create, inspect and export OpenFL .pbuf model files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from fedagg.cli.common import Commands, add_command, table
from fedagg.federation.store import publish_model
from fedagg.protocol.model_file import LoadedModel, ModelFileError, read_model


def register(commands: Commands) -> None:
    """Add the command group."""
    model = commands.add_parser("model", help="create, inspect and export OpenFL .pbuf model files")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    init = add_command(
        actions,
        "init",
        "write an initial model (.pbuf) from numpy arrays (.npz)",
        """\
  fedagg model init --from weights.npz --out init.pbuf
  fedagg model init --from checkpoint.npz --out init.pbuf --round 12     resume at round 12""",
    )
    init.add_argument(
        "--from", dest="source", type=Path, required=True, help="numpy .npz, one array per tensor"
    )
    init.add_argument("--out", type=Path, required=True, help="the .pbuf to write")
    init.add_argument("--round", type=int, default=0, help="round number the model starts (default 0)")
    init.set_defaults(handler=_init)
    show = add_command(
        actions, "show", "list a model's round and tensors", "  fedagg model show state/last.pbuf"
    )
    show.add_argument("file", type=Path)
    show.set_defaults(handler=_show)
    export = add_command(
        actions,
        "export",
        "write a model's tensors to a numpy .npz",
        """\
  fedagg model export state/best.pbuf --out best.npz""",
    )
    export.add_argument("file", type=Path)
    export.add_argument("--out", type=Path, required=True, help="the .npz to write")
    export.set_defaults(handler=_export)


def _init(args: argparse.Namespace) -> int:
    try:
        with np.load(args.source) as arrays:
            tensors = {name: np.asarray(arrays[name], np.float32) for name in arrays.files}
    except (OSError, ValueError) as error:
        raise SystemExit(f"fedagg: cannot read {args.source} as a numpy .npz: {error}") from None
    if not tensors:
        raise SystemExit(f"fedagg: {args.source} holds no arrays")
    publish_model(args.out, tensors, args.round)
    print(f"{args.out}: {len(tensors)} tensors, round {args.round}")
    return 0


def _show(args: argparse.Namespace) -> int:
    model = _read(args.file)
    rows = [
        [
            name,
            "x".join(map(str, values.shape)) or "scalar",
            f"{values.size:,}",
            f"{float(values.mean()):.6g}" if values.size else "-",
        ]
        for name, values in model.tensors.items()
    ]
    total = sum(values.size for values in model.tensors.values())
    print(
        f"{args.file}: round {model.round_number}, {len(rows)} tensors, {total:,} parameters "
        f"({total * 4 / 2**20:.2f} MiB as float32)\n"
    )
    print(table(rows, ["tensor", "shape", "elements", "mean"]))
    return 0


def _export(args: argparse.Namespace) -> int:
    model = _read(args.file)
    arrays: dict[str, Any] = {name: np.array(values) for name, values in model.tensors.items()}
    np.savez(args.out, **arrays)
    print(f"{args.out}: {len(model.tensors)} tensors from round {model.round_number}")
    return 0


def _read(path: Path) -> LoadedModel:
    try:
        return read_model(path)
    except ModelFileError as error:
        raise SystemExit(f"fedagg: {error}") from None
