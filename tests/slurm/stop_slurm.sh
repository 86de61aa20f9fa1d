#!/usr/bin/env bash
# Stop the daemons start_slurm.sh started (by their pid files) and remove its slurm.conf.
state=${1:?state directory}
for pidfile in "$state/slurmd.pid" "$state/slurmctld.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
if [ -f "$state/munged.started" ] && [ -f /run/munge/munged.pid ]; then
    kill "$(cat /run/munge/munged.pid)" 2>/dev/null
fi
grep -q "tests/slurm/start_slurm.sh" /etc/slurm/slurm.conf 2>/dev/null && rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
exit 0
