#!/usr/bin/env python3
"""Print the global batch and optimizer steps of every training job `snakemake -n` plans.

Each planned `train` job is resolved to its recipe; its process count follows the recipe's
`parallelism` and the GPU count the profile gives the job. Rows: the recipe's `rows`, else
DirectRefusal's ~1,000 (the dataset is not available offline: 1,000 is Safety-Tax's construction
and fits the paper code's README, which evaluates 10-epoch LoRA-14B at checkpoint-500 ... 5000 at
batch 2). The last column is the data-parallel reading of Appendix A.5 (global batch = GPUs x
per-device batch) for comparison.

The demo's jobs, in seconds:
`python benchmarks/train_steps.py --configfile config/demo.yaml --profile profiles/local`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--profile", type=Path, default=REPO / "profiles/slurm")
    args = parser.parse_args()

    import yaml

    sys.path.insert(0, str(REPO / "src"))
    from safelora import config as grid
    from safelora.gpu_hours import Assumptions, dry_run, parse_dryrun

    config = yaml.safe_load(args.configfile.read_text())
    grid.validate_schema(config)
    grid.complete_config(config, REPO)
    jobs = [j for j in parse_dryrun(dry_run(REPO, args.configfile, args.profile)) if j.rule == "train"]
    print(f"{len(jobs)} planned train jobs ({args.configfile.name}, profile {args.profile.name})")
    print(
        "| model | run | GPUs | parallelism | processes | per-device | accumulation | global batch "
        "| rows | steps/epoch | epochs | steps | DDP reading: global, steps/epoch |"
    )
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for job in sorted(jobs, key=lambda j: (j.wildcards["model"], j.wildcards["run"])):
        recipe = grid.training_recipe(config, job.wildcards["model"], job.wildcards["run"])
        sft, opts = recipe["sft"], recipe["safelora"]
        per_device, epochs = sft["per_device_train_batch_size"], sft["num_train_epochs"]
        rows = opts["data"].get("rows") or Assumptions().train_rows
        gpus = max(job.gpus, 1)  # launch_train.sh starts one (CPU) process for a job without a GPU
        ranks = grid.data_parallel_ranks(opts["parallelism"], gpus)
        accumulation = grid.gradient_accumulation(opts["global_batch"], per_device, ranks)
        steps = grid.steps_per_epoch(rows, opts["global_batch"], per_device, ranks)
        ddp_global = gpus * per_device
        ddp_steps = grid.steps_per_epoch(rows, ddp_global, per_device, gpus)
        print(
            f"| {opts['model']} | {opts['run']} | {job.gpus} | {opts['parallelism']} | {ranks} "
            f"| {per_device} | {accumulation} | {opts['global_batch']} | {rows} | {steps} "
            f"| {epochs} | {steps * epochs} | {ddp_global}, {ddp_steps} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
