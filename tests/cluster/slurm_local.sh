#!/usr/bin/env bash
# A one-node SLURM cluster on loopback for the tests: partitions `cpu` (default) and `gpu` (a fake
# GPU gres backed by /dev/null), memory enforcement, no accounting database.
#   tests/cluster/slurm_local.sh install      # apt-get install slurm-wlm munge (root)
#   tests/cluster/slurm_local.sh up STATE_DIR # writes STATE_DIR/slurm.conf, starts munged, slurmctld, slurmd
#   tests/cluster/slurm_local.sh down STATE_DIR
# Use the cluster with SLURM_CONF=STATE_DIR/slurm.conf in the environment.
set -euo pipefail
cmd=${1:?install|up|down}
state=${2:-/tmp/kneeflow-slurm}

case "$cmd" in
install)
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
  fi
  ;;
up)
  if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    echo "a slurmctld/slurmd is already running on this machine: take it down first" >&2; exit 1
  fi
  mkdir -p "$state"/{ctld,slurmd,munge}
  host=$(hostname -s)
  mem=$(awk '/MemTotal/ {print int($2/1024*0.8)}' /proc/meminfo)
  cpus=$(nproc)
  cat >"$state/slurm.conf" <<CONF
ClusterName=kneeflow-test
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmdSpoolDir=$state/slurmd
StateSaveLocation=$state/ctld
SlurmctldLogFile=$state/slurmctld.log
SlurmdLogFile=$state/slurmd.log
MpiDefault=none
GresTypes=gpu
DefMemPerCPU=1000
MinJobAge=120
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem Gres=gpu:fake:2 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
CONF
  # two fake GPUs (a data-parallel training job asks for 2), backed by two harmless device files
  printf 'NodeName=%s Name=gpu Type=fake File=/dev/null\nNodeName=%s Name=gpu Type=fake File=/dev/zero\n' "$host" "$host" >"$state/gres.conf"
  cp /etc/munge/munge.key "$state/munge/munge.key" 2>/dev/null || dd if=/dev/urandom of="$state/munge/munge.key" bs=128 count=1 status=none
  chmod 600 "$state/munge/munge.key"
  munged --force --key-file="$state/munge/munge.key" --socket="$state/munge/munge.socket" \
    --pid-file="$state/munge/munged.pid" --log-file="$state/munge/munged.log" --seed-file="$state/munge/seed"
  export SLURM_CONF="$state/slurm.conf"
  # job steps (srun inside sbatch) read the default location, not the submitter's SLURM_CONF
  if [ -w /etc ] && [ ! -e /etc/slurm/slurm.conf ]; then
    mkdir -p /etc/slurm
    ln -s "$state/slurm.conf" /etc/slurm/slurm.conf
    ln -sf "$state/gres.conf" /etc/slurm/gres.conf
    touch "$state/etc-links"
  fi
  slurmctld -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^idle'; then break; fi
    sleep 1
  done
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sinfo -h -o '%T' | grep -qE 'idle|mix' || { echo "slurm did not come up:" >&2; tail -20 "$state"/slurm*.log >&2; exit 1; }
  ;;
down)
  export SLURM_CONF="$state/slurm.conf"
  scancel --full --user="$(id -un)" >/dev/null 2>&1 || true
  for pidf in "$state/slurmd.pid" "$state/slurmctld.pid" "$state/munge/munged.pid"; do
    [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
  done
  sleep 1
  for pidf in "$state/slurmd.pid" "$state/slurmctld.pid" "$state/munge/munged.pid"; do
    [ -f "$pidf" ] && kill -9 "$(cat "$pidf")" 2>/dev/null || true
  done
  if [ -f "$state/etc-links" ]; then
    rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf "$state/etc-links"
  fi
  ;;
*)
  echo "usage: $0 install|up|down [STATE_DIR]" >&2; exit 2 ;;
esac
