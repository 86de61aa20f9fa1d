#!/usr/bin/env bash
# Stop the daemons start_slurm.sh started (pids recorded in STATE_DIR/pids), remove its config.
state=${1:?state directory}
pids=$(cat "$state/pids" 2>/dev/null)
[ -n "$pids" ] && kill $pids 2>/dev/null
for _ in $(seq 50); do
    alive=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && break
    sleep 0.1
done
[ -n "${alive:-}" ] && kill -9 $alive 2>/dev/null
grep -q "tests/slurm/start_slurm.sh" /etc/slurm/slurm.conf 2>/dev/null && rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf
exit 0
