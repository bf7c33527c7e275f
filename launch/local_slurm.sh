#!/usr/bin/env bash
# local_slurm.sh - a throwaway SLURM cluster on this one machine (Debian 12 packages, SLURM 22.05).
#
# For trying the batch scripts in launch/slurm/ without a real cluster, and for the test suite.
# It runs a private munged, one slurmctld, and N slurmd daemons that pretend to be the nodes
# node1..nodeN (all on 127.0.0.1, each slurmd on its own port), in one partition "local".
#
# Usage:
#   launch/local_slurm.sh start [--nodes N] [--gpus G]
#                                            start a cluster of N nodes (default 1) with G fake GPUs each (default
#                                            $LOCAL_SLURM_GPUS or 0) and wait until all are idle; a no-op if it
#                                            already runs with N nodes and G GPUs; otherwise a restart (running jobs
#                                            are cancelled)
#   launch/local_slurm.sh status             print sinfo; exit 0 if the cluster is up and answering, 1 if not
#   launch/local_slurm.sh stop               cancel its jobs, stop the daemons it started; a no-op if none runs
#   launch/local_slurm.sh --help             this text
#
# Root or not: as root, `start` installs the packages if missing (apt-get) and links /etc/slurm/slurm.conf (below);
# the daemons run as root, so jobs run as whoever submits them. As another user, it needs the packages
# already installed (else it prints the exact `sudo apt-get install ...` line and exits 1), leaves /etc alone,
# and runs every daemon as that user (SlurmUser = SlurmdUser = you), so jobs run as you only.
#
# Config (one approach everywhere): the cluster's config is $LOCAL_SLURM_DIR/slurm.conf, and every daemon and
# command this script runs gets SLURM_CONF pointing at it. For your own shell, `start` prints
#   export SLURM_CONF=$LOCAL_SLURM_DIR/slurm.conf
# which always works. As root it also links $LOCAL_SLURM_ETC_LINK (/etc/slurm/slurm.conf, where slurm commands
# look by default) to it when that path is free or already this link, so plain `sbatch`/`squeue` work too;
# an existing /etc/slurm/slurm.conf of another setup is never touched.
#
# State: everything lives in one directory, $LOCAL_SLURM_DIR (default $HOME/.local_slurm):
#   slurm.conf   generated config        munge/        private munge key, socket and seed
#   state/       slurmctld state         spool/NODE/   slurmd spool, one per node
#   log/         daemon logs             run/          pid files of the daemons started here (`stop` uses only these)
# Under sudo, HOME is root's home, which other users cannot enter: to submit jobs as yourself to a cluster
# started with sudo, choose a directory you can read, e.g. `sudo LOCAL_SLURM_DIR=$HOME/.local_slurm ...`,
# or, once the packages are installed, simply run the script as yourself.
#
# Behaviour worth knowing:
#   - Every start is a fresh cluster (slurmctld -c, logs emptied): jobs of an earlier run are forgotten.
#   - munged runs with --force, because its socket may sit under a home directory that others cannot enter.
#   - Each fake node gets the CPUs and memory that `slurmd -C` reports for the whole machine, so a job on
#     N nodes fits on a machine with few cores; the nodes share those cores.
#   - There is no slurmdbd, so `sacct` does not work: finished jobs keep their final state and exit code in
#     `scontrol show job` for an hour (MinJobAge). Requeued jobs (`--requeue`, `scontrol requeue`) may start
#     again about 6 s after the requeue (cred_expire=5), instead of SLURM's default 2 minutes.
#   - `sbatch --signal=B:USR1@N` works: slurmctld checks time limits every 30 s and sends the signal up to
#     30 s early, e.g. `--time=1 --signal=B:USR1@25` reaches the batch shell 5 to 35 s after the start.
#   - Fake GPUs (--gpus G): each node declares `Gres=gpu:G`, backed by placeholder files
#     $LOCAL_SLURM_DIR/dev/nvidia0..G-1 (gres.conf with AutoDetect=off, beside slurm.conf). SLURM schedules them like
#     GPUs: a job with `--gpus-per-node=2` gets SLURM_GPUS_ON_NODE=2 and two CUDA_VISIBLE_DEVICES entries, a job
#     asking for more than G is refused. As root the placeholders are character devices with /dev/null's numbers
#     (1, 3); otherwise plain empty files, which slurmd rejects as devices: the GPUs are still scheduled and
#     counted (SLURM_GPUS_ON_NODE), but jobs get no CUDA_VISIBLE_DEVICES. No program can compute on them: they
#     test the batch scripts' arithmetic.
#
# Environment variables:
#   LOCAL_SLURM_DIR      the state directory (default $HOME/.local_slurm)
#   LOCAL_SLURM_PORT     slurmctld's port; node I's slurmd listens on LOCAL_SLURM_PORT+I (default 6817)
#   LOCAL_SLURM_TIMEOUT  seconds `start` waits for all nodes to be idle, `stop` for jobs and daemons to end (default 60)
#   LOCAL_SLURM_ETC_LINK the link made, as root, to the config (default /etc/slurm/slurm.conf; empty: none, as in tests)
#   LOCAL_SLURM_GPUS     fake GPUs per node when `start` has no --gpus (default 0: a CPU-only cluster)
set -euo pipefail

STATE_DIR="${LOCAL_SLURM_DIR:-$HOME/.local_slurm}"
PORT="${LOCAL_SLURM_PORT:-6817}"
TIMEOUT="${LOCAL_SLURM_TIMEOUT:-60}"

CONF="$STATE_DIR/slurm.conf"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/log"
MUNGE_DIR="$STATE_DIR/munge"
ETC_LINK="${LOCAL_SLURM_ETC_LINK-/etc/slurm/slurm.conf}"
PACKAGES=(slurmctld slurmd slurm-client munge)
HEALTHY_STATES='idle|mix|alloc|comp'  # sinfo short states of a node that answers and takes jobs
export SLURM_CONF="$CONF"
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons live in /usr/sbin, often not on a user's PATH

# Prints the header comment of this file as help.
usage() { sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; }

# Prints an error and exits 1.
die() { echo "local_slurm: $*" >&2; exit 1; }

# Installs the missing Debian packages as root; as non-root prints the apt-get command and exits 1.
ensure_packages() {
  local missing=() pkg
  for pkg in "${PACKAGES[@]}"; do
    [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" == "install ok installed" ]] || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local install=(apt-get install -y --no-install-recommends "${missing[@]}")
  [[ $EUID -eq 0 ]] || die "missing packages ${missing[*]}; install them as root with: sudo ${install[*]}"
  echo "local_slurm: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${install[@]}" || { apt-get update && "${install[@]}"; }
}

# Prints the pid from pid file $1 if that process is alive (not a zombie) and runs the daemon the file is named for.
live_pid() {
  local file=$1 name pid _ comm state
  name=$(basename "$file" .pid)
  [[ -s $file ]] || return 1
  pid=$(<"$file")
  read -r _ comm state _ 2>/dev/null <"/proc/$pid/stat" || return 1  # "PID (NAME) STATE ..."
  [[ $state != Z && $comm == "(${name%%-*})" ]] || return 1
  echo "$pid"
}

# Prints how many nodes the current config declares.
configured_nodes() { grep -c '^NodeName=' "$CONF"; }

# Prints how many fake GPUs per node the current config declares (0 without GRES).
configured_gpus() {
  local gres
  gres=$(grep -m 1 -o ' Gres=gpu:[0-9]*' "$CONF" || true)
  echo "${gres#* Gres=gpu:}" | sed 's/^$/0/'
}

# True when all N nodes answer sinfo in a state matching the extended regex $2.
nodes_are() {
  local want=$1 pattern=$2 states
  states=$(timeout 10 sinfo -h -N -o '%t' 2>/dev/null) || return 1
  [[ $(grep -cxE "$pattern" <<<"$states") -eq $want ]]
}

# True when every daemon of an N-node cluster runs from here, slurmctld answers and all nodes are healthy.
cluster_is_up() {
  local nodes=$1 i
  live_pid "$RUN_DIR/munged.pid" >/dev/null && live_pid "$RUN_DIR/slurmctld.pid" >/dev/null || return 1
  for ((i = 1; i <= nodes; i++)); do live_pid "$RUN_DIR/slurmd-node$i.pid" >/dev/null || return 1; done
  [[ "$(timeout 10 scontrol ping 2>/dev/null)" == *"is UP"* ]] && nodes_are "$nodes" "$HEALTHY_STATES"
}

# Writes slurm.conf for N nodes with G fake GPUs each (and gres.conf when G > 0); the daemons run as the user
# running this script.
write_config() {
  local nodes=$1 gpus=$2 hardware i gres=
  hardware=$(slurmd -C | sed -n '1s/^NodeName=[^ ]* //p')  # "CPUs=... RealMemory=..." of this machine
  rm -f "$STATE_DIR/gres.conf"
  rm -rf "$STATE_DIR/dev"
  if ((gpus > 0)); then
    gres=" Gres=gpu:$gpus"
    mkdir -p "$STATE_DIR/dev"
    for ((i = 0; i < gpus; i++)); do  # placeholders that behave like /dev/null (SLURM wants device files)
      mknod -m 666 "$STATE_DIR/dev/nvidia$i" c 1 3 2>/dev/null || touch "$STATE_DIR/dev/nvidia$i"
    done
    {
      echo "# Generated by launch/local_slurm.sh: $gpus fake GPU(s) per node, placeholder files, no autodetection."
      echo "AutoDetect=off"
      echo "Name=gpu File=$STATE_DIR/dev/nvidia[0-$((gpus - 1))]"
    } >"$STATE_DIR/gres.conf"
  fi
  {
    echo "# Generated by launch/local_slurm.sh at every start: a local test cluster of $nodes node(s)."
    echo "ClusterName=local"
    echo "SlurmctldHost=$(hostname -s)(127.0.0.1)"
    echo "SlurmctldPort=$PORT"
    echo "SlurmUser=$(id -un)"
    echo "SlurmdUser=$(id -un)"
    echo "AuthType=auth/munge"
    echo "CredType=cred/munge"
    echo "AuthInfo=socket=$MUNGE_DIR/munge.socket,cred_expire=5"
    echo "StateSaveLocation=$STATE_DIR/state"
    echo "SlurmdSpoolDir=$STATE_DIR/spool/%n"
    echo "SlurmctldPidFile=$RUN_DIR/slurmctld.pid"
    echo "SlurmdPidFile=$RUN_DIR/slurmd-%n.pid"
    echo "SlurmctldLogFile=$LOG_DIR/slurmctld.log"
    echo "SlurmdLogFile=$LOG_DIR/slurmd-%n.log"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_Core"
    echo "MpiDefault=none"
    echo "ReturnToService=2"
    echo "EnforcePartLimits=ALL"
    echo "JobRequeue=1"
    echo "MinJobAge=3600"
    echo "KillWait=5"
    echo "MailProg=/bin/true"
    echo "SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2"
    ((gpus > 0)) && echo "GresTypes=gpu"
    for ((i = 1; i <= nodes; i++)); do
      echo "NodeName=node$i NodeAddr=127.0.0.1 Port=$((PORT + i)) $hardware$gres State=UNKNOWN"
    done
    echo "PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF"
}

# As root, links ETC_LINK to this cluster's config if that path is free or already this link.
link_etc_conf() {
  if [[ $EUID -ne 0 || -z $ETC_LINK ]]; then
    return 0
  elif [[ ! -e $ETC_LINK && ! -L $ETC_LINK ]]; then
    mkdir -p "$(dirname "$ETC_LINK")"
    ln -s "$CONF" "$ETC_LINK"
  elif [[ "$(readlink "$ETC_LINK")" != "$CONF" ]]; then
    echo "local_slurm: $ETC_LINK belongs to another setup, left alone: use SLURM_CONF (below)" >&2
  fi
}

# Starts munged with a private key and socket, then slurmctld (fresh state) and one slurmd per node.
start_daemons() {
  local nodes=$1 i
  [[ -s $MUNGE_DIR/munge.key ]] || mungekey --create --keyfile="$MUNGE_DIR/munge.key"
  munged --force --socket="$MUNGE_DIR/munge.socket" --key-file="$MUNGE_DIR/munge.key" \
    --seed-file="$MUNGE_DIR/munged.seed" --pid-file="$RUN_DIR/munged.pid" --log-file="$LOG_DIR/munged.log"
  slurmctld -c
  for ((i = 1; i <= nodes; i++)); do
    mkdir -p "$STATE_DIR/spool/node$i"
    slurmd -N "node$i"
  done
}

# Polls until command "$@" succeeds; fails after TIMEOUT seconds.
wait_for() {
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# True when slurmctld lists no job (running, pending or completing).
no_jobs_left() { [[ -z "$(timeout 10 squeue -h -o %A 2>/dev/null)" ]]; }

# True when none of the given pids is a live (non-zombie) process.
all_dead() {
  local pid _ state
  for pid in "$@"; do
    read -r _ _ state _ 2>/dev/null <"/proc/$pid/stat" && [[ $state != Z ]] && return 1
  done
  return 0
}

# Sends SIGTERM to the live daemons of the given pid files and waits until they have exited
# (a daemon deletes its own pid file as it begins to shut down, so the pids are kept here).
stop_daemons() {
  local file pid pids=()
  for file in "$@"; do
    pid=$(live_pid "$file") && pids+=("$pid")
  done
  [[ ${#pids[@]} -eq 0 ]] && return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true  # one may have exited meanwhile
  wait_for all_dead "${pids[@]}" || die "daemons ${pids[*]} still alive after ${TIMEOUT}s"
}

# Prints the last lines of every log, to explain a failed start.
show_logs() {
  local log
  for log in "$LOG_DIR"/*.log; do
    [[ -e $log ]] && { echo "==> $log <=="; tail -n 15 "$log"; }
  done >&2
}

# Prints how to point slurm commands at this cluster.
print_hint() { echo "export SLURM_CONF=$CONF"; }

# start N G: starts an N-node cluster with G fake GPUs per node unless one already runs with N nodes and G GPUs.
cmd_start() {
  local nodes=$1 gpus=$2
  [[ $nodes =~ ^[1-9][0-9]*$ ]] || die "--nodes wants a positive integer, got '$nodes'"
  [[ $gpus =~ ^[0-9]+$ ]] || die "--gpus wants a non-negative integer, got '$gpus'"
  ensure_packages
  if [[ -f $CONF ]] && [[ $(configured_nodes) -eq $nodes && $(configured_gpus) -eq $gpus ]] \
    && cluster_is_up "$nodes"; then
    echo "local_slurm: already running with $nodes node(s) ($gpus fake GPU(s) each) in $STATE_DIR"
    print_hint
    return 0
  fi
  cmd_stop
  rm -rf "$LOG_DIR"
  mkdir -p "$RUN_DIR" "$LOG_DIR" "$MUNGE_DIR" "$STATE_DIR/state" "$STATE_DIR/spool"
  write_config "$nodes" "$gpus"
  link_etc_conf
  start_daemons "$nodes"
  if ! wait_for nodes_are "$nodes" idle; then
    show_logs
    cmd_stop
    die "the $nodes node(s) were not idle after ${TIMEOUT}s (logs above, in $LOG_DIR)"
  fi
  sinfo
  print_hint
}

# stop: cancels the cluster's jobs, then stops the daemons recorded in run/*.pid: nodes, controller, munged.
cmd_stop() {
  local jobs=()
  if live_pid "$RUN_DIR/slurmctld.pid" >/dev/null; then
    mapfile -t jobs < <(timeout 10 squeue -h -o %A 2>/dev/null)
    if [[ ${#jobs[@]} -gt 0 ]]; then
      scancel "${jobs[@]}" || true
      wait_for no_jobs_left || echo "local_slurm: jobs still listed after ${TIMEOUT}s, stopping anyway" >&2
    fi
  fi
  stop_daemons "$RUN_DIR"/slurmd-*.pid
  stop_daemons "$RUN_DIR/slurmctld.pid"
  stop_daemons "$RUN_DIR/munged.pid"
  rm -f "$RUN_DIR"/*.pid
}

# status: prints sinfo; exit status 0 if the cluster is up and answering.
cmd_status() {
  if [[ -f $CONF ]] && cluster_is_up "$(configured_nodes)"; then
    sinfo
    print_hint
    return 0
  fi
  echo "local_slurm: no healthy cluster from $STATE_DIR"
  if live_pid "$RUN_DIR/slurmctld.pid" >/dev/null; then
    timeout 10 sinfo || true
  fi
  return 1
}

# Parses the command line and runs the command.
main() {
  local command=${1:-} nodes=1 gpus=${LOCAL_SLURM_GPUS:-0}
  [[ $# -gt 0 ]] && shift
  while [[ $# -gt 0 ]]; do
    case $1 in
      --nodes) [[ $# -ge 2 ]] || die "--nodes needs a value"; nodes=$2; shift 2 ;;
      --nodes=*) nodes=${1#--nodes=}; shift ;;
      --gpus) [[ $# -ge 2 ]] || die "--gpus needs a value"; gpus=$2; shift 2 ;;
      --gpus=*) gpus=${1#--gpus=}; shift ;;
      *) die "unknown argument '$1' (see --help)" ;;
    esac
  done
  case $command in
    start) cmd_start "$nodes" "$gpus" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
