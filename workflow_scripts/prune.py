#!/usr/bin/env python3
"""Prune a finished run: drop its trainer state and the epoch checkpoints not kept (config `prune`)."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True, help="the run's training manifest")
    parser.add_argument("--state-dir", required=True, help="the run's resumable trainer state")
    parser.add_argument(
        "--keep-epochs", required=True, help='"all", "last" or a JSON list of epochs (config prune.keep_epochs)'
    )
    parser.add_argument("--trainer-state", action="store_true", help="also delete the trainer state")
    parser.add_argument("--out", required=True, help="record of what was removed")
    args = parser.parse_args()

    from safelora.housekeeping import prune_run
    from safelora.io import atomic_write_json

    keep = args.keep_epochs if args.keep_epochs in ("all", "last") else json.loads(args.keep_epochs)
    try:
        record = prune_run(Path(args.manifest), Path(args.state_dir), keep, args.trainer_state)
    except ValueError as err:
        print(f"prune: {err}", file=sys.stderr)
        return 1
    atomic_write_json(args.out, record)
    print(f"removed {len(record['removed'])} folders; kept epochs {record['kept_epochs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
