#!/bin/sh
# A one-node Slurm queue on 127.0.0.1, to try `sweep --cluster slurm` against a real batch system
# on one machine (bench/bench_sweep_backends.py --slurm uses it). Debian/Ubuntu, run as root:
#
#     sh bench/slurm_loopback.sh          # install slurm-wlm and munge if missing, start, check
#     sh bench/slurm_loopback.sh stop     # stop slurmd, slurmctld and munged
#
# Writes /etc/slurm/slurm.conf (refusing to overwrite one it did not write), one partition `debug`
# holding this machine with all its CPUs and 80 % of its memory. Not for a shared machine: the
# daemons run as root and accept jobs from any local user.
set -eu

conf=/etc/slurm/slurm.conf
marker="# written by trs-aqa bench/slurm_loopback.sh"

# Whether a live (not zombie) process of this name runs: daemons started from a shell that does
# not reap its children leave zombies that pgrep alone would count.
running() {
    for pid in $(pgrep -x "$1"); do
        case "$(ps -o stat= -p "$pid")" in Z*) ;; *) return 0 ;; esac
    done
    return 1
}

if [ "${1:-start}" = stop ]; then
    for daemon in slurmd slurmctld munged; do
        pkill -x "$daemon" || true
    done
    i=0
    while { running slurmd || running slurmctld || running munged; } && [ "$i" -lt 30 ]; do
        i=$((i + 1))
        sleep 1
    done
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "slurm_loopback.sh: must run as root (it installs packages and starts daemons)" >&2
    exit 2
fi
if ! command -v slurmctld >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge
fi
if [ -e "$conf" ] && ! grep -qF "$marker" "$conf"; then
    echo "slurm_loopback.sh: $conf exists and was not written by this script; leaving it alone" >&2
    exit 2
fi

cpus=$(nproc)
memory_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
node=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
chown munge:munge /run/munge
cat >"$conf" <<EOF
$marker
ClusterName=loopback
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

running munged || runuser -u munge -- /usr/sbin/munged
running slurmctld || /usr/sbin/slurmctld
running slurmd || /usr/sbin/slurmd
i=0
while [ "$i" -lt 60 ]; do
    i=$((i + 1))
    if timeout 5 sinfo -h -o '%T' 2>/dev/null | grep -q idle; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "slurm_loopback.sh: the node did not come up idle; see /var/log/slurm/" >&2
timeout 5 sinfo >&2 || true
exit 1
