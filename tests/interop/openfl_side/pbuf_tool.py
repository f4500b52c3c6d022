"""Convert OpenFL ``ModelProto`` .pbuf files to/from .npz with OpenFL 1.7.1's own reader and writer.

Runs only with the OpenFL venv's python (``scripts/openfl-venv``); fedagg never imports openfl.

Usage::

    pbuf_tool.py to-npz IN.pbuf OUT.npz
        Read IN.pbuf with ``openfl.protocols.utils.load_proto`` + ``deconstruct_model_proto``
        (``NoCompressionPipeline``) and write the float32 tensors, in proto order, to OUT.npz.
        Prints one JSON object on stdout:
        ``{"round_number": R, "tensors": [{"name", "shape", "round_number", "tags", "lossless",
        "report", "metadata"}, ...]}``; ``round_number`` is null for a model without tensors.

    pbuf_tool.py from-npz IN.npz OUT.pbuf --round R
        Write the arrays of IN.npz (in archive order, cast to float32) as a ModelProto with
        ``construct_model_proto(tensors, R, NoCompressionPipeline())`` + ``dump_proto``: exactly what
        ``fx plan initialize`` and the aggregator's best/last saves produce (tags ``["model"]``,
        ``lossless=true``, one ``MetadataProto{int_list: shape}`` per tensor).

OpenFL's reader asserts that every tensor carries the same ``round_number`` and that the data length
matches the shape, so ``to-npz`` doubles as a conformance check for fedagg-written .pbuf files.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from openfl.pipelines import NoCompressionPipeline
from openfl.protocols import utils


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` without its keyword clashes (a tensor may be called ``file``)."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def to_npz(src: Path, dst: Path) -> dict[str, Any]:
    """Decode ``src`` with OpenFL and save the tensors to ``dst``; return a JSON-able description."""
    proto = utils.load_proto(str(src))
    tensors, round_number = utils.deconstruct_model_proto(proto, NoCompressionPipeline())
    save_npz(dst, {name: np.asarray(value, dtype=np.float32) for name, value in tensors.items()})
    described = [
        {
            "name": nt.name,
            "shape": list(np.shape(tensors[nt.name])),
            "round_number": nt.round_number,
            "tags": list(nt.tags),
            "lossless": nt.lossless,
            "report": nt.report,
            "metadata": [
                {
                    "int_list": list(md.int_list),
                    "int_to_float": {str(k): v for k, v in md.int_to_float.items()},
                    "bool_list": list(md.bool_list),
                }
                for md in nt.transformer_metadata
            ],
        }
        for nt in proto.tensors
    ]
    return {"round_number": round_number, "tensors": described}


def from_npz(src: Path, dst: Path, round_number: int) -> None:
    """Write the arrays of ``src`` as an OpenFL ModelProto for ``round_number`` to ``dst``."""
    with np.load(src, allow_pickle=False) as archive:
        tensors = {name: np.asarray(archive[name], dtype=np.float32) for name in archive.files}
    proto = utils.construct_model_proto(tensors, round_number, NoCompressionPipeline())
    utils.dump_proto(proto, str(dst))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    to = commands.add_parser("to-npz", help="ModelProto .pbuf -> .npz (prints JSON metadata)")
    to.add_argument("src", type=Path, metavar="IN.pbuf")
    to.add_argument("dst", type=Path, metavar="OUT.npz")
    frm = commands.add_parser("from-npz", help=".npz -> ModelProto .pbuf")
    frm.add_argument("src", type=Path, metavar="IN.npz")
    frm.add_argument("dst", type=Path, metavar="OUT.pbuf")
    frm.add_argument("--round", type=int, required=True, dest="round_number", help="ModelProto round")
    args = parser.parse_args(argv)

    if args.command == "to-npz":
        print(json.dumps(to_npz(args.src, args.dst)))
    else:
        from_npz(args.src, args.dst, args.round_number)
    return 0


if __name__ == "__main__":
    sys.exit(main())
