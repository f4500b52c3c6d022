"""``fedagg model``: create, inspect, export and download OpenFL .pbuf model files."""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from fedagg.cli.commands import Commands, add_command, add_output_option
from fedagg.cli.connection import (
    CONNECTION_EPILOG,
    add_connection_options,
    add_name_option,
    configure_client_logging,
    connect,
)
from fedagg.cli.exits import reported_errors
from fedagg.cli.formatting import print_json, table
from fedagg.collaborator.reference import BIAS, WEIGHTS, DatasetSpec, initial_weights
from fedagg.federation.store import publish_model
from fedagg.protocol.codec import Float32Array, Shape
from fedagg.protocol.message_size import MAX_SEND_MESSAGE_BYTES, TensorTooLarge, check_tensors_fit
from fedagg.protocol.model_file import LoadedModel, ModelFileError, read_model

SHOW_JSON = """

-o json prints one object: file, round, parameters, bytes (as float32),
  tensors: [{name, shape (a list; [] for a scalar), elements, mean (null when empty)}]"""


def register(commands: Commands) -> None:
    """Add the command group."""
    model = commands.add_parser("model", help="create, inspect, export and download OpenFL .pbuf model files")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    init = add_command(
        actions,
        "init",
        "write an initial model (.pbuf) from numpy arrays (.npz), or the reference runner's",
        f"""\
  fedagg model init --from weights.npz --out init.pbuf
  fedagg model init --from checkpoint.npz --out init.pbuf --round 12     resume at round 12
  fedagg model init --reference --out init.pbuf                          for "fedagg collaborator"

--reference writes what "fedagg collaborator" (softmax regression) trains: {WEIGHTS} (FEATURES x CLASSES)
and {BIAS} (CLASSES), float32 zeros; --features and --classes must match the collaborators' options.""",
    )
    source = init.add_mutually_exclusive_group(required=True)
    source.add_argument("--from", dest="source", type=Path, help="numpy .npz, one array per tensor")
    source.add_argument(
        "--reference", action="store_true", help="the reference runner's model (fedagg collaborator)"
    )
    init.add_argument("--out", type=Path, required=True, help="the .pbuf to write")
    init.add_argument("--round", type=int, default=0, help="round number the model starts (default 0)")
    init.add_argument(
        "--features",
        type=int,
        default=DatasetSpec.features,
        help=f"--reference: input features (default {DatasetSpec.features})",
    )
    init.add_argument(
        "--classes",
        type=int,
        default=DatasetSpec.classes,
        help=f"--reference: classes (default {DatasetSpec.classes})",
    )
    init.set_defaults(handler=_init)
    show = add_command(
        actions,
        "show",
        "list a model's round and tensors",
        "  fedagg model show state/last.pbuf\n  fedagg model show state/last.pbuf -o json",
        more=SHOW_JSON,
    )
    show.add_argument("file", type=Path)
    add_output_option(show, "see below")
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
    pull = add_command(
        actions,
        "pull",
        "download the best or last model from a running aggregator (GetTrainedModel)",
        """\
  fedagg model pull --best --out best.pbuf --address agg.example.org:50051 \\
      --ca ca.crt --cert observer.crt --key observer.key --name observer
  fedagg model pull --last --out last.pbuf    (with FEDAGG_ADDRESS, FEDAGG_CA, ... set)

The best model is the one with the highest aggregated validate_agg metric so far; the last is the latest
aggregate. The file is an OpenFL .pbuf ("fedagg model show" / "export" read it).""",
        more=CONNECTION_EPILOG,
    )
    which = pull.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true", help="the best model so far")
    which.add_argument("--last", action="store_true", help="the latest aggregate")
    pull.add_argument("--out", type=Path, required=True, help="the .pbuf to write")
    add_connection_options(pull, identity_required=False, timeout=30.0)
    add_name_option(pull, "this client's name (its certificate CN)", default="observer")
    pull.add_argument("--experiment", default="", help="experiment name (default: the one served)")
    pull.set_defaults(handler=_pull)


def _init(args: argparse.Namespace) -> int:
    if args.reference:
        if args.features < 1 or args.classes < 1:
            raise SystemExit("fedagg: --features and --classes must be positive")
        tensors = initial_weights(DatasetSpec(classes=args.classes, features=args.features))
        _check_fits({name: values.shape for name, values in tensors.items()})
    else:
        tensors = _read_npz(args.source)
    publish_model(args.out, tensors, args.round)
    shapes = ", ".join(f"{name} {_shape(values)}" for name, values in tensors.items())
    print(f"{args.out}: {len(tensors)} tensors ({shapes}), round {args.round}")
    return 0


def _check_fits(shapes: dict[str, Shape]) -> None:
    """Refuse a tensor that no reply could carry (before anything is written)."""
    try:
        check_tensors_fit(shapes, MAX_SEND_MESSAGE_BYTES, "gRPC")
    except TensorTooLarge as error:
        raise SystemExit(f"fedagg: {error}") from None


def _npz_shapes(path: Path) -> dict[str, Shape]:
    """The shapes the .npy headers of a .npz declare, without reading any array's data."""
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for member_name in archive.namelist():
            with archive.open(member_name) as member:
                major, _minor = npy_format.read_magic(member)
                read_header = (
                    npy_format.read_array_header_1_0 if major == 1 else npy_format.read_array_header_2_0
                )
                shapes[member_name.removesuffix(".npy")] = tuple(read_header(member)[0])
    return shapes


def _read_npz(path: Path) -> dict[str, Float32Array]:
    """The arrays of a .npz as float32, once their shapes are known to fit in replies."""
    try:
        if zipfile.is_zipfile(path):
            _check_fits(_npz_shapes(path))
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise SystemExit(f"fedagg: cannot read {path} as a numpy .npz: {error}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise SystemExit(
            f"fedagg: {path} is a .npy (one array without a name); give a .npz of named arrays "
            "(numpy.savez('init.npz', weights=..., bias=...))"
        )
    try:
        with loaded as arrays:
            tensors = {name: np.asarray(arrays[name], np.float32) for name in arrays.files}
    except (OSError, ValueError) as error:
        raise SystemExit(f"fedagg: cannot read {path} as a numpy .npz: {error}") from None
    if not tensors:
        raise SystemExit(f"fedagg: {path} holds no arrays")
    return tensors


def _shape(values: Float32Array) -> str:
    return "x".join(map(str, values.shape)) or "scalar"


def _show(args: argparse.Namespace) -> int:
    model = _read(args.file)
    total = sum(values.size for values in model.tensors.values())
    if args.output == "json":
        print_json(
            {
                "file": str(args.file),
                "round": model.round_number,
                "parameters": total,
                "bytes": total * 4,
                "tensors": [
                    {
                        "name": name,
                        "shape": list(values.shape),
                        "elements": int(values.size),
                        "mean": float(values.mean()) if values.size else None,
                    }
                    for name, values in model.tensors.items()
                ],
            }
        )
        return 0
    rows = [
        [
            name,
            _shape(values),
            f"{values.size:,}",
            f"{float(values.mean()):.6g}" if values.size else "-",
        ]
        for name, values in model.tensors.items()
    ]
    print(
        f"{args.file}: round {model.round_number}, {len(rows)} tensors, {total:,} parameters "
        f"({total * 4 / 2**20:.2f} MiB as float32)\n"
    )
    print(table(rows, ["tensor", "shape", "elements", "mean"]))
    return 0


def _export(args: argparse.Namespace) -> int:
    model = _read(args.file)
    try:
        _write_npz(args.out, model.tensors)
    except OSError as error:
        raise SystemExit(f"fedagg: cannot write {args.out}: {error.strerror}") from None
    print(f"{args.out}: {len(model.tensors)} tensors from round {model.round_number}")
    return 0


def _write_npz(path: Path, tensors: Mapping[str, Float32Array]) -> None:
    """What ``numpy.savez(path, **tensors)`` writes, for any tensor names (savez's own ``file`` and
    ``allow_pickle`` included): a zip of ``<name>.npy`` members."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, values in tensors.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(values), allow_pickle=False)


def _pull(args: argparse.Namespace) -> int:
    configure_client_logging()
    with reported_errors(), connect(args, args.name) as client:
        model = client.trained_model(best=args.best, experiment=args.experiment)
    publish_model(args.out, model.tensors, model.round_number)
    total = sum(values.size for values in model.tensors.values())
    kind = "best" if args.best else "last"
    print(
        f"{args.out}: the {kind} model, round {model.round_number}, {len(model.tensors)} tensors, {total:,} parameters"
    )
    return 0


def _read(path: Path) -> LoadedModel:
    try:
        return read_model(path)
    except ModelFileError as error:
        raise SystemExit(f"fedagg: {error}") from None
