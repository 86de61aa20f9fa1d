#!/usr/bin/env python3
"""Write a JSON record given on the command line to a file, atomically, once its kind's schema validates it."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", required=True, help="record kind: src/safelora/schemas/records/<kind>.schema.yaml")
    parser.add_argument("--json", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from safelora.io import write_record

    write_record(args.out, args.kind, json.loads(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
