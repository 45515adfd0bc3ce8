#!/usr/bin/env bash
# Stop the daemons slurm_up.sh started, by their PID files, and restore the previous slurm.conf and
# gres.conf.
set -uo pipefail
SLURM_ROOT=${SLURM_ROOT:-/tmp/symprep-slurm}
for daemon in slurmd slurmctld; do
  pidfile="$SLURM_ROOT/$daemon.pid"
  if [ -f "$pidfile" ]; then
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$pidfile"
  fi
done
if [ -f "$SLURM_ROOT/started-munged" ]; then
  for pidfile in "$SLURM_ROOT/munged.pid" /run/munge/munged.pid; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null && break
  done
  rm -f "$SLURM_ROOT/started-munged" "$SLURM_ROOT/munged.pid"
fi
[ -f "$SLURM_ROOT/slurm.conf.orig" ] && cp "$SLURM_ROOT/slurm.conf.orig" /etc/slurm/slurm.conf
if [ -f "$SLURM_ROOT/gres.conf.orig" ]; then
  cp "$SLURM_ROOT/gres.conf.orig" /etc/slurm/gres.conf
elif [ -f "$SLURM_ROOT/gres.conf.none" ]; then
  rm -f /etc/slurm/gres.conf
fi
rm -f "$SLURM_ROOT/gres.conf.orig" "$SLURM_ROOT/gres.conf.none"
echo "slurm: stopped"
