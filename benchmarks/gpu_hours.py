#!/usr/bin/env python3
"""Print the GPU-hours of what `snakemake -n --profile profiles/slurm` would run, per rule.

Two tables from the same plan: with an engine started by every generate and judge job, and with
engines shared within the plan's group jobs, as the workflow runs them (docs/engines.md).
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
    parser.add_argument("--dryrun-file", type=Path, help="a saved `snakemake -n` listing instead of running one")
    parser.add_argument("targets", nargs="*", help="targets of the dry run (default: the whole grid)")
    args = parser.parse_args()

    import yaml

    sys.path.insert(0, str(REPO / "src"))
    from safelora import config as grid
    from safelora.gpu_hours import dry_run, estimate, format_table, parse_dryrun

    text = (
        args.dryrun_file.read_text() if args.dryrun_file else dry_run(REPO, args.configfile, args.profile, args.targets)
    )
    config = yaml.safe_load(args.configfile.read_text())
    grid.validate_schema(config)
    grid.complete_config(config, REPO)
    jobs = parse_dryrun(text)
    groups = len({j.group for j in jobs if j.group is not None})
    print(f"{len(jobs)} planned jobs in {groups} group jobs ({args.configfile.name}, profile {args.profile.name})")
    print("\nAn engine per job:")
    print(format_table(estimate(jobs, config, shared_engines=False)))
    print("\nEngines shared within group jobs (the plan):")
    print(format_table(estimate(jobs, config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
