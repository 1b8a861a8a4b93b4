"""Look at, export and merge measurement databases; a target's numbers are never mixed with another's.

    python experiments/measurements.py list   --db runs/measurements.sqlite
    python experiments/measurements.py export --db runs/measurements.sqlite --target host --out host.json
    python experiments/measurements.py merge  --db runs/measurements.sqlite --target cortex-a72 --source pi4.sqlite
"""

from __future__ import annotations

import argparse
import json

from deploy.cli import run_main
from deploy.db import MeasurementDB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("list", "export", "merge"))
    parser.add_argument("--db", default="runs/measurements.sqlite", help="the measurement database")
    parser.add_argument("--target", help="export: this target's measurements; merge: a source holding only this target's (a file with any other target is refused)")
    parser.add_argument("--out", help="export: the JSON file to write")
    parser.add_argument("--source", help="merge: the database to copy from (only read)")
    args = parser.parse_args(argv)
    if args.action != "list" and not args.target:
        raise ValueError(f"{args.action} needs --target (a database keeps every target's numbers apart)")
    with MeasurementDB(args.db) as db:
        if args.action == "list":
            for fp in db.fingerprints():
                print(f"{db.count(fp):8d}  {fp}  {json.dumps(db.target_description(fp))}")
        elif args.action == "export":
            if not args.out:
                raise ValueError("export needs --out FILE")
            fingerprints = db.fingerprints_of(args.target)
            if not fingerprints:
                raise ValueError(f"{args.db} has no measurements of target {args.target!r}")
            rows = db.export_json(args.out, fingerprints)
            print(f"exported {rows} costs of {args.target} to {args.out}")
        else:
            if not args.source:
                raise ValueError("merge needs --source FILE")
            print(f"merged {db.merge_from(args.source, args.target)} costs of {args.target} from {args.source}")
    return 0


if __name__ == "__main__":
    run_main(main)
