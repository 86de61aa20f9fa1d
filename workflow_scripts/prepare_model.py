#!/usr/bin/env python3
"""Convert a GGUF model shipped in a Python package into a plain transformers checkpoint."""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", required=True, help='JSON: {"gguf": {"package": ..., "file": ...}}')
    parser.add_argument("--out", required=True, help="output checkpoint folder")
    args = parser.parse_args()

    from safelora.training.models import prepare_gguf_model

    prepare_gguf_model(json.loads(args.source)["gguf"], Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
