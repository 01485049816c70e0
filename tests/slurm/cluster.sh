#!/usr/bin/env bash
# A throw-away one-node SLURM cluster on this (Debian) machine, for tests.
#
#   tests/slurm/cluster.sh start    install slurm-wlm + munge if missing (root + apt-get),
#                                   write /etc/slurm/slurm.conf, start munged, slurmctld,
#                                   slurmd and wait until the node is idle
#   tests/slurm/cluster.sh stop     kill the daemons we started (by their pid files)
#   tests/slurm/cluster.sh status   show the daemons and `sinfo`; exit 0 iff the node is usable
#
# Env:
#   SLURM_TEST_DIR        state/spool/log/pid files (default /tmp/slurm-test)
#   SLURM_TEST_PARTITION  partition name (default main; profiles/slurm* expect "main")
#   SLURM_TEST_TIMEOUT    seconds to wait for the node to become idle (default 60)
#   SLURM_TEST_FORCE_CONF=1  overwrite an /etc/slurm/slurm.conf not written by this script
#
# Exit codes: 0 ok; 1 failure (daemon logs are printed); 2 this machine cannot host the
# cluster (not root, or no apt-get, and slurm not installed): callers may skip on 2 only.
set -euo pipefail

DIR="${SLURM_TEST_DIR:-/tmp/slurm-test}"
PARTITION="${SLURM_TEST_PARTITION:-main}"
TIMEOUT="${SLURM_TEST_TIMEOUT:-60}"
CONF=/etc/slurm/slurm.conf
MARKER="# written by tests/slurm/cluster.sh"
HOST="$(hostname -s)"

log() { echo "cluster.sh: $*" >&2; }

is_root() { [[ "$(id -u)" -eq 0 ]]; }

have_slurm() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sinfo >/dev/null && command -v munged >/dev/null
}

pid_alive() {  # pid_alive PIDFILE -> 0 if the process in it runs
    local f="$1" pid
    [[ -s "$f" ]] || return 1
    pid="$(cat "$f" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

node_state() {  # prints e.g. "idle", "down*", "" if the controller does not answer
    timeout 10 sinfo -h -N -n "$HOST" -o '%t' 2>/dev/null | head -n1 || true
}

node_usable() {
    case "$(node_state)" in
        idle | mix | mixed | alloc | allocated | comp | completing) return 0 ;;
        *) return 1 ;;
    esac
}

dump_logs() {
    log "---- diagnostics ----"
    for f in "$DIR"/log/*.start.log "$DIR"/log/slurmctld.log "$DIR"/log/slurmd.log \
        /var/log/munge/munged.log; do
        if [[ -f "$f" ]]; then
            echo "==== tail -n 40 $f ====" >&2
            tail -n 40 "$f" >&2 || true
        else
            echo "==== $f: missing ====" >&2
        fi
    done
    echo "==== sinfo ====" >&2
    timeout 10 sinfo -N -l >&2 2>&1 || true
    echo "==== scontrol show node $HOST ====" >&2
    timeout 10 scontrol show node "$HOST" >&2 2>&1 || true
}

# daemon NAME CMD...: run a self-daemonizing program without handing it our lock fd (9) or
# the caller's stdout/stderr pipes (a test harness would wait on them forever); its early
# output goes to $DIR/log/NAME.start.log.
daemon() {
    local name="$1"
    shift
    "$@" </dev/null >"$DIR/log/$name.start.log" 2>&1 9>&-
}

fail() {
    log "ERROR: $*"
    dump_logs
    exit 1
}

install_packages() {
    have_slurm && return 0
    if ! is_root; then
        log "slurm-wlm/munge are not installed and we are not root: cannot set up the" \
            "test cluster here (install them as root: apt-get install slurm-wlm munge)."
        exit 2
    fi
    if ! command -v apt-get >/dev/null; then
        log "slurm-wlm/munge are not installed and there is no apt-get on this machine."
        exit 2
    fi
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2 || fail "apt-get update failed"
    # policy-rc.d 101: the packages' postinst must not try to start services (no systemd
    # here, and we start the daemons ourselves).
    local rcd=/usr/sbin/policy-rc.d created_rcd=0
    if [[ ! -e "$rcd" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$rcd" && chmod +x "$rcd" && created_rcd=1
    fi
    local rc=0
    apt-get install -y -q --no-install-recommends slurm-wlm munge >&2 || rc=$?
    [[ $created_rcd -eq 1 ]] && rm -f "$rcd"
    [[ $rc -eq 0 ]] || fail "apt-get install slurm-wlm munge failed (rc=$rc)"
    have_slurm || fail "slurm-wlm installed, but slurmctld/slurmd/sinfo/munged not on PATH"
}

write_conf() {
    local cpus mem_mb real_mb
    cpus="$(nproc)"
    mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
    # a bit under the machine's memory: 90 %, leaving at least 512 MB to the OS
    real_mb=$((mem_mb * 9 / 10))
    if ((mem_mb - real_mb < 512)); then real_mb=$((mem_mb - 512)); fi
    ((real_mb > 0)) || real_mb=100

    if [[ -f "$CONF" ]] && ! grep -qF "$MARKER" "$CONF" && [[ "${SLURM_TEST_FORCE_CONF:-0}" != 1 ]]; then
        fail "$CONF exists and was not written by this script; refusing to overwrite it" \
            "(set SLURM_TEST_FORCE_CONF=1 to overwrite)"
    fi
    mkdir -p /etc/slurm "$DIR"/state "$DIR"/spool "$DIR"/log
    local tmp
    tmp="$(mktemp "$CONF.XXXXXX")"
    cat >"$tmp" <<EOF
$MARKER (one-node test cluster; state under $DIR)
ClusterName=local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# keeps finished jobs visible to squeue long enough for Snakemake's status checks (>= 300),
# and to "scontrol show job" for the tests' checks after a whole-workflow run (minutes)
MinJobAge=1200
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$HOST CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    chmod 644 "$tmp"
    mv -f "$tmp" "$CONF"
}

start_munge() {
    local key=/etc/munge/munge.key
    if [[ ! -s "$key" ]]; then
        log "creating munge key $key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then
            mungekey --create --keyfile="$key" --force
        else
            dd if=/dev/urandom of="$key" bs=1 count=1024 status=none
        fi
    fi
    chown munge:munge "$key"
    chmod 400 "$key"
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    mkdir -p "$DIR/log"
    if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
        return 0  # a munged is already answering
    fi
    log "starting munged"
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    daemon munged su -s /bin/sh munge -c /usr/sbin/munged || fail "munged did not start"
    touch "$DIR/munged.started-by-us"
    local i
    for i in $(seq 1 20); do
        if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    fail "munge -n | unmunge does not work"
}

wait_idle() {
    local deadline=$((SECONDS + TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state="$(node_state)"
        case "$state" in
            idle | mix | mixed | alloc | allocated | comp | completing) return 0 ;;
            drain* | down* | drng* | fail*)
                # e.g. a state left over from a previous run: resume it
                timeout 10 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        pid_alive "$DIR/slurmctld.pid" || fail "slurmctld died"
        pid_alive "$DIR/slurmd.pid" || fail "slurmd died"
        sleep 1
    done
    fail "node $HOST not idle after ${TIMEOUT}s (state: '${state:-no answer}')"
}

cmd_start() {
    if pid_alive "$DIR/slurmctld.pid" && pid_alive "$DIR/slurmd.pid" && node_usable; then
        log "already running (node $HOST: $(node_state))"
        return 0
    fi
    install_packages
    if ! is_root; then
        log "SLURM is installed but not running, and starting it needs root."
        exit 2
    fi
    mkdir -p "$DIR"
    write_conf
    start_munge
    if ! pid_alive "$DIR/slurmctld.pid"; then
        log "starting slurmctld"
        daemon slurmctld slurmctld -c -f "$CONF" || fail "slurmctld did not start"
    fi
    if ! pid_alive "$DIR/slurmd.pid"; then
        log "starting slurmd"
        daemon slurmd slurmd -f "$CONF" || fail "slurmd did not start"
    fi
    wait_idle
    log "up: node $HOST $(node_state), partition $PARTITION, state in $DIR"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
    local name="$1" f="$2" pid i
    if ! pid_alive "$f"; then
        rm -f "$f"
        return 0
    fi
    pid="$(cat "$f")"
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$f"; return 0; }
        sleep 0.2
    done
    log "$name (pid $pid) did not exit after 10 s; sending KILL"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

cmd_stop() {
    stop_pidfile slurmd "$DIR/slurmd.pid"
    stop_pidfile slurmctld "$DIR/slurmctld.pid"
    if [[ -e "$DIR/munged.started-by-us" ]]; then
        stop_pidfile munged /run/munge/munged.pid
        rm -f "$DIR/munged.started-by-us"
    fi
}

cmd_status() {
    local ok=0
    for d in slurmctld slurmd; do
        if pid_alive "$DIR/$d.pid"; then
            echo "$d: running (pid $(cat "$DIR/$d.pid"))"
        else
            echo "$d: not running"
            ok=1
        fi
    done
    # (sinfo needs ~9 s to give up when no slurmctld answers: only ask a running one)
    if [[ $ok -eq 0 ]]; then
        timeout 10 sinfo -N 2>&1 || true
        node_usable || ok=1
    fi
    return $ok
}

main() {
    local cmd="${1:-}"
    case "$cmd" in
        start | stop)
            mkdir -p "$DIR" 2>/dev/null || true
            # serialize concurrent start/stop calls
            if [[ -w "$DIR" ]] && command -v flock >/dev/null; then
                exec 9>"$DIR/cluster.lock"
                flock -w 600 9 || fail "could not lock $DIR/cluster.lock"
            fi
            "cmd_$cmd"
            ;;
        status) cmd_status ;;
        *)
            echo "usage: $0 start|stop|status" >&2
            exit 64
            ;;
    esac
}

main "$@"
