#!/usr/bin/env bash
# Start a single-node SLURM (munged, slurmctld, slurmd) for tests/test_slurm.py. Needs root.
# Usage: start_slurm.sh STATE_DIR   (logs go there; stop_slurm.sh STATE_DIR stops what this started)
set -euo pipefail
state=${1:?state directory}
here=$(cd "$(dirname "$0")" && pwd)
host=$(hostname -s)
mkdir -p "$state/ctld" "$state/d" "$state/gpus" /etc/slurm
: > "$state/pids"
for i in 0 1 2 3 4 5 6 7; do ln -sf /dev/null "$state/gpus/nvidia$i"; done
sed -e "s|@HOST@|$host|g" -e "s|@STATE@|$state|g" "$here/slurm.conf.in" > /etc/slurm/slurm.conf
echo "NodeName=$host Name=gpu File=$state/gpus/nvidia[0-7]" > /etc/slurm/gres.conf

if ! munge -n 2>/dev/null | unmunge > /dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
    cat /run/munge/munged.pid >> "$state/pids"
fi
/usr/sbin/slurmctld
/usr/sbin/slurmd
for _ in $(seq 50); do
    [ -s "$state/slurmctld.pid" ] && [ -s "$state/slurmd.pid" ] && break
    sleep 0.1
done
cat "$state/slurmctld.pid" "$state/slurmd.pid" >> "$state/pids"
for _ in $(seq 100); do
    if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qx idle; then exit 0; fi
    sleep 0.2
done
echo "SLURM node did not become idle" >&2
timeout 5 sinfo >&2 || true
tail -n 20 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
exit 1
