#!/usr/bin/env python3
"""Print the GPU-hours of the jobs `snakemake -n` would still run, per rule (every judge rule as one
row, `judge`; safelora.gpu_hours), and how many jobs of the DAG are done: on a fresh checkout the
whole grid, on a partly finished or changed workflow what the rerun costs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configfile", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--profile", type=Path, default=REPO / "profiles/slurm")
    parser.add_argument("--directory", type=Path, help="the working directory of the workflow (default: the checkout)")
    parser.add_argument(
        "--assumptions", type=Path, help="YAML overriding fields of safelora.gpu_hours.Assumptions (a pilot's figures)"
    )
    parser.add_argument("--dryrun-file", type=Path, help="a saved `snakemake -n` listing instead of running one")
    parser.add_argument("targets", nargs="*", help="targets of the dry run (default: the whole grid)")
    args = parser.parse_args()

    import yaml

    sys.path.insert(0, str(REPO / "src"))
    from safelora import config as grid
    from safelora.gpu_hours import Assumptions, dry_run, estimate, format_table, load_assumptions, parse_dryrun

    options = ["--directory", str(args.directory), "--snakefile", str(REPO / "Snakefile")] if args.directory else []
    config = yaml.safe_load(args.configfile.read_text())
    grid.validate_schema(config)
    grid.complete_config(config, REPO)
    assumptions = load_assumptions(args.assumptions) if args.assumptions else Assumptions()
    if args.dryrun_file:
        jobs, done = parse_dryrun(args.dryrun_file.read_text()), None
    else:
        jobs = parse_dryrun(dry_run(REPO, args.configfile, args.profile, [*args.targets, *options]))
        every = parse_dryrun(dry_run(REPO, args.configfile, args.profile, [*args.targets, *options, "--forceall"]))
        done = len(every) - len(jobs)
    rows = estimate(jobs, config, assumptions)
    unpriced = sum(r.unpriced for r in rows)
    print(
        f"still to run: {len(jobs)} jobs, {sum(r.gpu_hours for r in rows):,.1f} GPU-h"
        + (f" ({unpriced} GPU jobs not priced)" if unpriced else "")
        + ("" if done is None else f"; done: {done} jobs")
        + f" ({args.configfile.name}, profile {args.profile.name})\n"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
