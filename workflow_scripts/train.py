#!/usr/bin/env python3
"""Safety SFT of one run (full or LoRA); launched by torchrun, one process per GPU; resumes itself."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", required=True, help="recipe YAML written by write_recipe")
    parser.add_argument("--train-data", required=True, help="prompt/completion JSONL")
    parser.add_argument("--base", required=True, help="base model folder or hub id")
    parser.add_argument("--state-dir", required=True, help="resumable trainer state (kept across reruns)")
    parser.add_argument("--checkpoint-dir", required=True, help="where epoch-<e>/ checkpoints are published")
    parser.add_argument("--svd", default=None, help="cached base SVD (orthogonality regularization)")
    parser.add_argument("--manifest", required=True, help="written last, when every epoch is published")
    parser.add_argument("--mem-mb", type=float, required=True, help="host memory budget; stop clearly near it (0: off)")
    args = parser.parse_args()

    import os

    from safelora.housekeeping import MemoryGuard

    MemoryGuard(args.mem_mb / int(os.environ.get("WORLD_SIZE", "1"))).start()  # per rank

    import yaml

    from safelora.training.sft import TrainPaths, train

    with open(args.recipe, encoding="utf-8") as fh:
        recipe = yaml.safe_load(fh)
    paths = TrainPaths(
        train_data=Path(args.train_data),
        base_model=args.base,
        state_dir=Path(args.state_dir),
        checkpoint_dir=Path(args.checkpoint_dir),
        manifest=Path(args.manifest),
        svd=Path(args.svd) if args.svd else None,
    )
    return train(recipe, paths, source=args.recipe)


if __name__ == "__main__":
    sys.exit(main())
