#!/usr/bin/env python3
"""Print the GPU-hours of what `snakemake -n --profile profiles/slurm` would run, per rule
(every judge rule as one row, `judge`; safelora.gpu_hours)."""

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
    print(f"{len(jobs)} planned jobs ({args.configfile.name}, profile {args.profile.name})\n")
    print(format_table(estimate(jobs, config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
