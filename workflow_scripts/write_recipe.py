#!/usr/bin/env python3
"""Write a run's resolved training recipe (JSON from the config) as YAML."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", required=True, help="JSON recipe")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import yaml

    from safelora.io import atomic_write_text

    atomic_write_text(args.out, yaml.safe_dump(json.loads(args.recipe), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
