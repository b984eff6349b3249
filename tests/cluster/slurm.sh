#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for tests and for trying the SLURM profile.
#
#   tests/cluster/slurm.sh start [STATE_DIR]   install the Debian packages when missing (root),
#                                              start munged, slurmctld and slurmd, wait for the
#                                              node to be idle
#   tests/cluster/slurm.sh stop [STATE_DIR]    cancel this cluster's jobs, then end exactly the
#                                              daemons that `start` started (by their recorded PIDs)
#   tests/cluster/slurm.sh status [STATE_DIR]  the daemons and the node
#
# STATE_DIR (default $SPARSELAB_SLURM_DIR, else /tmp/sparselab-slurm) holds the munge key and
# socket, SLURM's state, logs and the PIDs. The configuration goes to the system's default place,
# /etc/slurm/slurm.conf and gres.conf (a copy stays in STATE_DIR), because the SLURM executor's job
# step drops SLURM_CONF from the environment of the `srun` it runs inside each job: every SLURM
# command then finds this cluster with no setting. `start` refuses to replace a slurm.conf that it
# did not write; `stop` removes the two files it wrote.
# SPARSELAB_SLURM_PORT (default 6817): slurmctld's port; slurmd listens on the next one.
#
# Exit status: 0 done (also "already running" / "not running"), 1 the cluster did not come up,
# 2 not root (needed to install packages and to run slurmd), 3 the packages could not be
# installed, 4 this machine has a SLURM configuration of its own (/etc/slurm), 64 usage.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ACTION=${1:-}
DIR=$(realpath -m "${2:-${SPARSELAB_SLURM_DIR:-/tmp/sparselab-slurm}}")
PORT=${SPARSELAB_SLURM_PORT:-6817}
NODE=sparselab1
PACKAGES=(slurmctld slurmd slurm-client munge)
COMMANDS=(munged mungekey slurmctld slurmd sbatch squeue scontrol sinfo scancel setpriv)
DAEMONS=(munged slurmctld slurmd) # start order; stop goes the other way
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
ETC=/etc/slurm
MARK="# Written by sparselab tests/cluster/slurm.sh for the test cluster in $DIR"
# SLURM's compiled-in default configuration; a start from inside a job must not look like a step.
unset SLURM_CONF SLURM_JOB_ID SLURM_JOBID

say() { printf 'slurm.sh: %s\n' "$*"; }
die() { say "error: $2" >&2; exit "$1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

case "$DIR" in
    / | /tmp | /root | /home | /var | /etc | /usr) die 64 "refusing state folder $DIR" ;;
esac

# The PID `start` recorded for a daemon, if that process still runs (and is that daemon: a
# recycled PID of another program does not count).
pid_of() {
    local file="$DIR/pids/$1.pid" pid state
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/stat ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$1" ]] || return 1
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $state != Z ]] || return 1
    echo "$pid"
}

# Whether the process recorded for a daemon exists (while it execs, its name is not yet the
# daemon's: `start` waits on this, everything else on pid_of).
launched() {
    local file="$DIR/pids/$1.pid" pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ -r /proc/$pid/stat && $(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) != Z ]]
}

running() { # how many of the daemons run
    local n=0 d
    for d in "${DAEMONS[@]}"; do pid_of "$d" >/dev/null && n=$((n + 1)); done
    echo "$n"
}

slurmd_started() { scontrol show node "$NODE" 2>/dev/null | sed -n 's/.*SlurmdStartTime=\([^ ]*\).*/\1/p'; }
node_state() { sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n1; }

install_packages() {
    local missing=() c
    for c in "${COMMANDS[@]}"; do command -v "$c" >/dev/null || missing+=("$c"); done
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die 2 "not root: cannot install ${PACKAGES[*]} (missing: ${missing[*]})"
    command -v apt-get >/dev/null || die 3 "no apt-get to install ${PACKAGES[*]} (missing: ${missing[*]})"
    say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    local t0 log="$DIR/log/apt.log"
    t0=$(now)
    # Keep the packages' init scripts from starting system daemons during the install.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
    fi
    local ok=1
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends "${PACKAGES[@]}"; } >"$log" 2>&1 || ok=0
    if ((made_policy)); then rm -f "$policy"; fi
    if ((!ok)); then
        tail -n 20 "$log" >&2
        die 3 "apt-get could not install ${PACKAGES[*]} (log: $log)"
    fi
    for c in "${COMMANDS[@]}"; do
        command -v "$c" >/dev/null || die 3 "$c is still missing after installing ${PACKAGES[*]}"
    done
    INSTALL_SECONDS=$(since "$t0")
    say "installed in ${INSTALL_SECONDS} s"
}

write_config() {
    local cpus mem_mb host
    cpus=$(nproc)
    # RealMemory under the machine's (slurmd drains a node that has less than it claims).
    mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
    host=$(hostname -s)
    { echo "$MARK"; sed -e "s|@DIR@|$DIR|g" -e "s|@HOST@|$host|g" -e "s|@NODE@|$NODE|g" \
        -e "s|@CPUS@|$cpus|g" -e "s|@MEM_MB@|$mem_mb|g" \
        -e "s|@CTLD_PORT@|$PORT|g" -e "s|@SLURMD_PORT@|$((PORT + 1))|g" \
        "$HERE/slurm.conf.in"; } >"$DIR/slurm.conf"
    # The fake GPU: a device file that exists, so that the node offers gres gpu:1.
    printf '%s\nNodeName=%s Name=gpu File=/dev/null\n' "$MARK" "$NODE" >"$DIR/gres.conf"
    mkdir -p "$ETC"
    cp "$DIR/slurm.conf" "$DIR/gres.conf" "$ETC/"
}

# Whether $ETC/$1 is absent or was written by us (for any state folder: the first line says which).
ours() { [[ ! -e $ETC/$1 ]] || head -n1 "$ETC/$1" | grep -q '^# Written by sparselab tests/cluster/slurm.sh'; }

# Refuse to replace a configuration of the machine, or one of ours whose cluster still runs.
check_etc() {
    local f other
    for f in slurm.conf gres.conf; do
        ours "$f" || die 4 "$ETC/$f exists and was not written by this script: not replacing it"
    done
    if [[ -e $ETC/slurm.conf ]]; then
        other=$(head -n1 "$ETC/slurm.conf" | sed -n 's/.* for the test cluster in //p')
        if [[ -n $other && $other != "$DIR" ]] && DIR=$other pid_of slurmctld >/dev/null; then
            die 1 "the test cluster in $other runs (stop it first: $0 stop $other)"
        fi
    fi
}

remove_etc() {
    local f
    for f in slurm.conf gres.conf; do
        if [[ -e $ETC/$f ]] && [[ $(head -n1 "$ETC/$f") == "$MARK" ]]; then rm -f "$ETC/$f"; fi
    done
    return 0
}

# Start a daemon in its own session, detached from our stdin/stdout (so that a caller capturing
# our output does not wait for it), and record its PID. setsid execs in place (we are not a
# process group leader), so $! is the daemon's own PID.
launch() {
    local name=$1
    shift
    setsid "$@" </dev/null >>"$DIR/log/$name.out" 2>&1 9>&- &
    echo $! >"$DIR/pids/$name.pid"
}

show_logs() {
    local f
    for f in "$DIR"/log/*.log "$DIR"/log/*.out "$DIR"/munge/munged.log; do
        if [[ -s $f ]]; then echo "--- $f"; tail -n 15 "$f"; fi
    done >&2
    return 0
}

start() {
    local t0 n
    t0=$(now)
    INSTALL_SECONDS=0
    n=$(running)
    if ((n == ${#DAEMONS[@]})); then
        say "already running in $DIR (node $NODE: $(node_state))"
        return 0
    fi
    if ((n > 0)); then
        say "partly running in $DIR: stopping what runs first"
        stop_daemons
    fi
    [[ $(id -u) == 0 ]] || die 2 "not root: slurmd must run as root"
    check_etc
    mkdir -p "$DIR"/{state,spool,run,log,pids,munge}
    install_packages
    id munge >/dev/null 2>&1 || die 1 "the munge package created no munge user"

    # munge: our own key, socket, pid and seed files, owned by the munge user (munged wants the
    # socket's folder open to all; the key itself is readable by munge only).
    chown munge:munge "$DIR/munge"
    chmod 755 "$DIR/munge"
    if [[ ! -s $DIR/munge/munge.key ]]; then
        mungekey --create --keyfile="$DIR/munge/munge.key" >/dev/null
    fi
    chown munge:munge "$DIR/munge/munge.key"
    chmod 600 "$DIR/munge/munge.key"
    write_config
    rm -f "$DIR"/pids/*.pid "$DIR/munge/munge.socket.2"

    launch munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --key-file="$DIR/munge/munge.key" --socket="$DIR/munge/munge.socket.2" \
        --pid-file="$DIR/munge/munged.pid" --seed-file="$DIR/munge/munged.seed" \
        --log-file="$DIR/munge/munged.log"
    local i
    for ((i = 0; i < 100; i++)); do
        munge -n -S "$DIR/munge/munge.socket.2" 2>/dev/null | unmunge -S "$DIR/munge/munge.socket.2" \
            >/dev/null 2>&1 && break
        launched munged || break
        sleep 0.1
    done
    if ! munge -n -S "$DIR/munge/munge.socket.2" 2>/dev/null |
        unmunge -S "$DIR/munge/munge.socket.2" >/dev/null 2>&1; then
        show_logs
        stop_daemons
        remove_etc
        die 1 "munged did not come up"
    fi

    local launched_at previous
    launched_at=$(date +%Y-%m-%dT%H:%M:%S)
    previous=$(cat "$DIR/run/slurmd-registered" 2>/dev/null || true)
    launch slurmctld slurmctld -D -i
    launch slurmd slurmd -D -N "$NODE"

    # Up when the new slurmd has registered (its start time is ours: the state folder may hold
    # the node's last state) and the node is idle (or runs jobs kept in the state folder).
    local state="" registered=""
    for ((i = 0; i < 600; i++)); do
        state=$(node_state)
        if [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]; then
            registered=$(slurmd_started)
            [[ $registered != "$previous" && ! $registered < $launched_at ]] && break
        fi
        if ! launched munged || ! launched slurmctld || ! launched slurmd; then
            state="a daemon exited"
            break
        fi
        sleep 0.1
    done
    if ((i == 600)) || ! [[ $state =~ ^(idle|mixed|allocated|completing)$ ]]; then
        show_logs
        stop_daemons
        remove_etc
        die 1 "the node did not come up (state: ${state:-no answer from slurmctld})"
    fi
    echo "$registered" >"$DIR/run/slurmd-registered"
    local pids="" d
    for d in "${DAEMONS[@]}"; do pids+=" $d=$(pid_of "$d")"; done
    say "started in $(since "$t0") s (package install ${INSTALL_SECONDS} s) in $DIR:$pids; node $NODE $state"
}

# End the daemons we recorded, newest first; nothing else is signalled.
stop_daemons() {
    local d pid i
    for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
        d=${DAEMONS[i]}
        if pid=$(pid_of "$d"); then
            kill -TERM "$pid" 2>/dev/null || true
            local j
            for ((j = 0; j < 150; j++)); do
                pid_of "$d" >/dev/null || break
                sleep 0.1
            done
            if pid_of "$d" >/dev/null; then
                say "$d ($pid) ignored SIGTERM for 15 s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
            fi
            say "stopped $d ($pid)"
        fi
        rm -f "$DIR/pids/$d.pid"
    done
}

stop() {
    local t0 ids i
    t0=$(now)
    if (($(running) == 0)); then
        say "not running in $DIR"
        rm -f "$DIR"/pids/*.pid
        remove_etc
        return 0
    fi
    # Jobs still in this cluster would outlive slurmd (their slurmstepd stays): cancel them first.
    if pid_of slurmctld >/dev/null; then
        ids=$(squeue --noheader --format=%i --states=PENDING,RUNNING,SUSPENDED,COMPLETING \
            2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${ids// /} ]]; then
            say "cancelling jobs $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            for ((i = 0; i < 150; i++)); do
                [[ -z $(squeue --noheader --format=%i --states=RUNNING,COMPLETING 2>/dev/null) ]] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemons
    remove_etc
    say "stopped in $(since "$t0") s"
}

status() {
    local d pid
    for d in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$d"); then say "$d: running ($pid)"; else say "$d: not running"; fi
    done
    if pid_of slurmctld >/dev/null; then
        sinfo --nodes="$NODE" || true
        squeue || true
    fi
}

mkdir -p "$DIR"
# One start/stop at a time per state folder.
exec 9>"$DIR/.lock"
flock 9
case "$ACTION" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die 64 "usage: $0 {start|stop|status} [STATE_DIR]" ;;
esac
