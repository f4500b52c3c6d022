"""Print the federation/aggregator uuids that OpenFL 1.7.1's ``Plan.parse`` computes for a plan.

Runs only with the OpenFL venv's python (``scripts/openfl-venv``); fedagg never imports openfl.

Usage::

    plan_uuid.py --plan PLAN.yaml [--cols COLS.yaml] [--data DATA.yaml]

prints one JSON line::

    {"federation_uuid": "plan.yaml_1a2b3c4d", "aggregator_uuid": "aggregator_plan.yaml_1a2b3c4d",
     "authorized_cols": ["one", "two"], "rounds_to_train": 3}

The call is ``Plan.parse(plan_config_path=Path(PLAN), cols_config_path=Path(COLS), resolve=True)``,
exactly as ``fx aggregator start`` makes it. What that needs and does (read from
``openfl/federated/plan/plan.py`` 1.7.1 and checked):

* **No workspace layout.** Neither the current directory nor any ``save/``, ``cert/`` or ``src/`` folder
  matters; nothing is imported from the plan's templates and no file is written.
* **Name.** ``plan.name`` is the plan file's *base name* including its extension, so the same content
  saved as ``plan.yaml`` and ``my.yaml`` gives different uuids.
* **Sections.** Every top-level value must be a mapping; each one without ``settings`` gets
  ``settings: {}`` added (e.g. ``tasks``), and that is part of the hash.
* **defaults.** A section's ``defaults: <path>`` is popped and resolved against the *installed*
  ``<site-packages>/openfl-workspace/workspace/`` (``plan/defaults/aggregator.yaml`` etc.), not against
  the plan's folder; an absolute path is used as is. The defaults file's ``settings`` are updated with
  the section's ``settings``, then its other keys are overridden by the section's. **A defaults file
  that does not exist is silently treated as empty.** So the uuid of a plan that uses ``defaults`` depends
  on the OpenFL version's default files; a self-contained plan (no ``defaults``) does not.
* **Required keys** (after defaults): ``aggregator.settings.rounds_to_train``,
  ``network.settings.agg_addr`` and ``network.settings.agg_port`` (``KeyError`` otherwise).
* **Hash.** ``sha384(yaml.dump(config))`` with PyYAML's default ``dump`` (keys sorted, block style,
  plain Python types, so ``3`` and ``"3"`` differ). It is taken *before* ``agg_addr: auto`` /
  ``agg_port: auto`` are replaced (by the FQDN / a port derived from the hash), so it does not depend on
  the host. ``federation_uuid = f"{plan.name}_{hash[:8]}"``, ``aggregator_uuid =
  f"aggregator_{federation_uuid}"``.
* **Collaborators.** ``authorized_cols`` is the ``collaborators:`` list of the cols file (``[]`` when the
  file is missing or has no such key); it does not enter the hash. ``--data`` (``name,path`` lines) does
  not either.
* **fx caveat.** ``fx plan initialize`` rewrites ``plan.yaml`` (``resolve=False`` parse, with defaults
  merged and ``agg_addr`` patched) when ``agg_addr`` is ``auto`` or ``-a`` is given; a running fx
  federation's uuid is that of the rewritten file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from openfl.federated import Plan


def plan_identity(
    plan_path: Path, cols_path: Path | None, data_path: Path | None = None
) -> dict[str, object]:
    """Parse like ``fx`` does and return the identity strings OpenFL derives."""
    plan = Plan.parse(
        plan_config_path=plan_path,
        cols_config_path=cols_path,
        data_config_path=data_path,
        resolve=True,
    )
    return {
        "federation_uuid": plan.federation_uuid,
        "aggregator_uuid": plan.aggregator_uuid,
        "authorized_cols": list(plan.authorized_cols or []),
        "rounds_to_train": plan.rounds_to_train,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--plan", type=Path, required=True, help="plan YAML (its file name is part of the uuid)"
    )
    parser.add_argument("--cols", type=Path, help="cols YAML with a `collaborators:` list")
    parser.add_argument("--data", type=Path, help="data config (collaborator,path lines); optional")
    args = parser.parse_args(argv)
    if not args.plan.is_file():
        parser.error(f"no such plan file: {args.plan}")
    print(json.dumps(plan_identity(args.plan, args.cols, args.data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
