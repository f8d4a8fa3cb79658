# Sourced by deploy/local-cluster.sh: starting, stopping and waiting for the cluster's processes.
# shellcheck shell=bash

# --- processes --------------------------------------------------------------------------------

# The state and start time of process pid ("S 123456"); fails when there is no such process.
# The start time tells a process from a later one that reuses its pid.
process_stat() {
    local stat fields
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    # Fields after the command name, which may itself hold spaces and parentheses.
    read -r -a fields <<<"${stat##*) }"
    printf '%s %s\n' "${fields[0]}" "${fields[19]}"
}

# Whether pid still runs the process that started at started (a zombie does not count).
is_running() {
    local pid=$1 started=$2 state start
    read -r state start < <(process_stat "$pid") || return 1
    [[ $state != Z && $start == "$started" ]]
}

# start NAME COMMAND...: runs COMMAND in its own session, logs to deploy/run/NAME.log, and
# records it in the pids file as "pid start-time name".
start() {
    local name=$1
    shift
    local pid started
    setsid "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    pid=$!
    read -r _ started < <(process_stat "$pid") || started=gone
    printf '%s %s %s\n' "$pid" "$started" "$name" >>"$PIDS_FILE"
    note "started $name (pid $pid): $*"
}

# Stops every process of the pids file, last started first: SIGTERM, then SIGKILL at the timeout.
stop_all() {
    [[ -f $PIDS_FILE ]] || return 0
    local pid started name waited
    while read -r pid started name; do
        is_running "$pid" "$started" || continue
        note "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || continue
        waited=0
        while is_running "$pid" "$started"; do
            if ((waited >= STOP_TIMEOUT * 10)); then
                note "$name did not stop within ${STOP_TIMEOUT}s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
        wait "$pid" 2>/dev/null || true
    done < <(tac "$PIDS_FILE")
    rm -f "$PIDS_FILE"
}

# Fails when a process of a previous run still runs (its data would be wiped under it).
refuse_if_running() {
    [[ -f $PIDS_FILE ]] || return 0
    local pid started name
    while read -r pid started name; do
        if is_running "$pid" "$started"; then
            die "a local cluster is still running ($name, pid $pid): stop it first with" \
                "'bash deploy/local-cluster.sh stop'"
        fi
    done <"$PIDS_FILE"
}

on_exit() {
    local status=$?
    ((STARTED)) || exit "$status"
    if [[ ${KEEP:-0} == 1 ]]; then
        print_usage
        exit "$status"
    fi
    log "Stopping the local cluster"
    stop_all
    if ((status != 0)); then
        note "logs are kept in deploy/run/*.log"
    fi
    exit "$status"
}

# --- readiness ----------------------------------------------------------------------------------

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# An HTTP/1.0 GET on 127.0.0.1 without curl: prints the response.
http_get() (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
    timeout 5 cat <&3
)

# wait_until DESCRIPTION NAME COMMAND...: polls COMMAND every half second; fails when the process
# NAME (from the pids file) died or at READY_TIMEOUT, showing the end of its log.
wait_until() {
    local what=$1 name=$2 tries=$((READY_TIMEOUT * 2))
    shift 2
    while ! "$@" >/dev/null 2>&1; do
        if ! process_alive "$name"; then
            tail -n 30 "$RUN_DIR/$name.log" >&2 || true
            die "$name exited while waiting for $what (log: deploy/run/$name.log)"
        fi
        tries=$((tries - 1))
        if ((tries <= 0)); then
            tail -n 30 "$RUN_DIR/$name.log" >&2 || true
            die "timed out after ${READY_TIMEOUT}s waiting for $what (log: deploy/run/$name.log)"
        fi
        sleep 0.5
    done
    note "ready: $what"
}

process_alive() {
    local pid started name
    while read -r pid started name; do
        if [[ $name == "$1" ]]; then
            is_running "$pid" "$started"
            return
        fi
    done <"$PIDS_FILE"
    return 1
}

etcd_healthy() {
    http_get "$ETCD_METRICS_PORT" /health | grep -q '"health": *"true"'
}

token_written() {
    [[ -s $TOKEN_FILE ]]
}

listening() {
    grep -q '^listening on ' "$RUN_DIR/$1.log"
}

# Both agents are registered, as the CLI shows them.
agents_registered() {
    local agents
    agents="$(sluice agent list)" || return 1
    grep -qw proxy-1 <<<"$agents" && grep -qw proxy-2 <<<"$agents"
}
