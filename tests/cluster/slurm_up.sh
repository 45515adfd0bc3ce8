#!/usr/bin/env bash
# Install (Debian packages) and start a single-node SLURM on localhost for the cluster tests.
# Writes its config and PID files under $SLURM_ROOT (default /tmp/symprep-slurm); stop with slurm_down.sh.
# The node carries one fake GPU (a generic resource on /dev/null) and sits in two partitions,
# `debug` and `gpu`, as configs/profiles/slurm expects: GPU requests are scheduled, no CUDA is needed.
set -euo pipefail
SLURM_ROOT=${SLURM_ROOT:-/tmp/symprep-slurm}
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi
mkdir -p "$SLURM_ROOT"/{state,spool,log}
chown -R slurm:slurm "$SLURM_ROOT"/{state,spool,log}
chmod 755 "$SLURM_ROOT"

# munge: Debian ships a key; start the daemon as its user unless one answers already
if ! munge -n >/dev/null 2>&1; then
  install -d -o munge -g munge /run/munge
  runuser -u munge -- /usr/sbin/munged  # PID file: /run/munge/munged.pid
  for _ in $(seq 20); do munge -n >/dev/null 2>&1 && break; sleep 0.5; done
  touch "$SLURM_ROOT/started-munged"
fi

cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
conf=/etc/slurm/slurm.conf
gres_conf=/etc/slurm/gres.conf
[ -f "$conf" ] && [ ! -f "$SLURM_ROOT/slurm.conf.orig" ] && cp "$conf" "$SLURM_ROOT/slurm.conf.orig"
if [ ! -e "$SLURM_ROOT/gres.conf.orig" ] && [ ! -e "$SLURM_ROOT/gres.conf.none" ]; then
  if [ -f "$gres_conf" ]; then cp "$gres_conf" "$SLURM_ROOT/gres.conf.orig"; else touch "$SLURM_ROOT/gres.conf.none"; fi
fi
# a fake GPU: slurmd 22.05 drops a gpu given by Count= alone, so it names a device file that every
# machine has; SLURM schedules and accounts it like a real one (and sets CUDA_VISIBLE_DEVICES=0)
echo "NodeName=localhost Name=gpu File=/dev/null" > "$gres_conf"
cat > "$conf" <<CONF
ClusterName=symprep-test
SlurmctldHost=localhost
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=$SLURM_ROOT/state
SlurmdSpoolDir=$SLURM_ROOT/spool
SlurmctldLogFile=$SLURM_ROOT/log/slurmctld.log
SlurmdLogFile=$SLURM_ROOT/log/slurmd.log
SlurmctldPidFile=$SLURM_ROOT/slurmctld.pid
SlurmdPidFile=$SLURM_ROOT/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=300
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
CONF

# -c: a clean start, no node state (a drain reason, say) or jobs kept from an earlier run
/usr/sbin/slurmctld -c
/usr/sbin/slurmd -N localhost
for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null | head -n1 || true)
  if [ "$state" = "idle" ]; then
    echo "slurm: localhost idle ($cpus CPUs, $mem_mb MB, gres $(sinfo -h -N -o %G | head -n1))"
    exit 0
  fi
  sleep 1
done
echo "slurm did not come up ($(sinfo -h -N -o '%T: %E' 2>&1 | head -n1)); logs in $SLURM_ROOT/log" >&2
exit 1
