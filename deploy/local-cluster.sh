#!/usr/bin/env bash
# A local Sluice cluster and a guided demo, on one Debian machine.
#
#   bash deploy/local-cluster.sh          install what is missing, build, make a CA and certificates,
#                                         start etcd, 2 coordinators (each with its web console) and
#                                         2 agents, all over TLS, back up 6 demo VMs, show a graceful
#                                         and an immediate stop, the metrics and the roles of API
#                                         tokens, then stop everything it started
#   KEEP=1 bash deploy/local-cluster.sh   the same, but leave the cluster running afterwards
#   bash deploy/local-cluster.sh stop     stop a cluster left running by KEEP=1
#
# Run it as root from the repository root (root only to apt-get install what is missing).
# Everything it creates lives under deploy/run/ (git-ignored), wiped at each start: the cluster
# CA and certificates in deploy/run/pki/, and the admin token the first coordinator created in
# deploy/run/admin.token (mode 0600), which the demo uses.
#
# Environment:
#   KEEP=1             leave the cluster running at exit
#   SKIP_BUILD=1       do not run `cargo build --release` (use binaries already built)
#   SLUICE_BIN_DIR     where the binaries are (default: target/release, or $CARGO_TARGET_DIR/release)
#   STOP_TIMEOUT       seconds to wait for each process after SIGTERM before SIGKILL (default 60)
#   READY_TIMEOUT      seconds to wait for each readiness condition (default 60)

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="$ROOT/deploy/run"
PIDS_FILE="$RUN_DIR/pids"
BIN_DIR="${SLUICE_BIN_DIR:-${CARGO_TARGET_DIR:-$ROOT/target}/release}"
STOP_TIMEOUT="${STOP_TIMEOUT:-60}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"

ETCD_CLIENT_PORT=23790
ETCD_PEER_PORT=23800
# Plaintext /health and /metrics only; clients reach etcd over TLS with a certificate.
ETCD_METRICS_PORT=23791
ETCD_URL="https://127.0.0.1:$ETCD_CLIENT_PORT"
COORDINATOR_PORTS=(7400 7401)
# The console, the HTTP API and /metrics of each coordinator (--http-listen).
HTTP_PORTS=(7480 7481)
CONSOLE_URL="https://127.0.0.1:${HTTP_PORTS[0]}/"
AGENT_PORTS=(7500 7501)
ENDPOINTS="https://127.0.0.1:7400,https://127.0.0.1:7401"
PKI="$RUN_DIR/pki"
CA_CERT="$PKI/ca/ca.crt"
TOKEN_FILE="$RUN_DIR/admin.token"
TRANSFER_RATE_LIMIT=10000000
VM_COUNT=6
VM_SIZE=64M
VM_DATA=32M
JOB=demo

# Set once the cluster processes are started: the exit trap stops only what this run started.
STARTED=0

log() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
    printf '\033[31merror:\033[0m %s\n' "$*" >&2
    exit 1
}

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

# --- set-up -------------------------------------------------------------------------------------

install_missing() {
    bash "$ROOT/.ci/install" || die "the install step failed (its message is above)"

    if ! command -v cargo >/dev/null && [[ -x $HOME/.cargo/bin/cargo ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        cat >&2 <<'EOF'
error: cargo is not installed. Install Rust (1.90 or newer) with rustup:

    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"

then run this script again.
EOF
        exit 1
    fi
}

build() {
    if [[ ${SKIP_BUILD:-0} == 1 ]]; then
        note "SKIP_BUILD=1: using the binaries in $BIN_DIR"
    else
        log "Building sluice-coordinator, sluice-agent and sluice (release)"
        (cd "$ROOT" && cargo build --release -p sluice-coordinator -p sluice-agent -p sluice-cli --bins)
    fi
    local bin
    for bin in sluice-coordinator sluice-agent sluice; do
        [[ -x $BIN_DIR/$bin ]] || die "$BIN_DIR/$bin is missing: the build did not produce it"
    done
}

check_ports_free() {
    local port
    for port in "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" "$ETCD_METRICS_PORT" "${COORDINATOR_PORTS[@]}" \
        "${HTTP_PORTS[@]}" "${AGENT_PORTS[@]}"; do
        if port_open "$port"; then
            die "port 127.0.0.1:$port is already in use; the local cluster needs" \
                "$ETCD_CLIENT_PORT, $ETCD_PEER_PORT, $ETCD_METRICS_PORT, ${COORDINATOR_PORTS[*]}," \
                "${HTTP_PORTS[*]} and ${AGENT_PORTS[*]}"
        fi
    done
}

# issue KIND ID [FLAGS...]: a certificate for ID in deploy/run/pki/ID/ (ID.crt, ID.key, ca.crt).
issue() {
    local kind=$1 id=$2
    shift 2
    "$BIN_DIR/sluice" pki issue --dir "$PKI/ca" --kind "$kind" --id "$id" --out "$PKI/$id" "$@" >/dev/null
    note "$kind certificate: deploy/run/pki/$id/$id.crt"
}

# The cluster CA and a certificate for etcd, each coordinator and each agent.
make_pki() {
    "$BIN_DIR/sluice" pki init --dir "$PKI/ca" >/dev/null
    note "cluster CA: deploy/run/pki/ca/ca.crt (its key ca.key is mode 0600)"
    issue etcd etcd
    local i
    for i in "${!COORDINATOR_PORTS[@]}"; do
        issue coordinator "coord-$((i + 1))"
    done
    for i in "${!AGENT_PORTS[@]}"; do
        issue agent "proxy-$((i + 1))"
    done
}

# --tls-cert, --tls-key and --tls-ca of the node ID.
tls_flags() {
    printf '%s\n' --tls-cert "$PKI/$1/$1.crt" --tls-key "$PKI/$1/$1.key" --tls-ca "$CA_CERT"
}

start_etcd() {
    start etcd etcd \
        --name sluice-local \
        --data-dir "$RUN_DIR/etcd" \
        --listen-client-urls "$ETCD_URL" \
        --advertise-client-urls "$ETCD_URL" \
        --cert-file "$PKI/etcd/etcd.crt" \
        --key-file "$PKI/etcd/etcd.key" \
        --trusted-ca-file "$CA_CERT" \
        --client-cert-auth \
        --listen-metrics-urls "http://127.0.0.1:$ETCD_METRICS_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "sluice-local=http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster-state new \
        --max-request-bytes 33554432 \
        --logger zap \
        --log-outputs stderr
    wait_until "etcd on $ETCD_URL" etcd etcd_healthy
}

# Coordinators reach etcd with their own certificate; the first makes the admin token.
start_coordinators() {
    local i id
    local -a bootstrap tls
    for i in "${!COORDINATOR_PORTS[@]}"; do
        id="coord-$((i + 1))"
        bootstrap=()
        ((i == 0)) && bootstrap=(--bootstrap-token-file "$TOKEN_FILE")
        mapfile -t tls < <(tls_flags "$id")
        start "$id" "$BIN_DIR/sluice-coordinator" \
            --etcd "$ETCD_URL" \
            --listen "127.0.0.1:${COORDINATOR_PORTS[i]}" \
            --http-listen "127.0.0.1:${HTTP_PORTS[i]}" \
            --id "$id" \
            --lease-ttl 5 \
            "${tls[@]}" \
            --etcd-ca "$CA_CERT" \
            --etcd-cert "$PKI/$id/$id.crt" \
            --etcd-key "$PKI/$id/$id.key" \
            "${bootstrap[@]}"
    done
    for i in "${!COORDINATOR_PORTS[@]}"; do
        id="coord-$((i + 1))"
        wait_until "$id on 127.0.0.1:${COORDINATOR_PORTS[i]}" "$id" listening "$id"
    done
    wait_until "the admin token in deploy/run/admin.token" coord-1 token_written
    note "console: open $CONSOLE_URL (or https://127.0.0.1:${HTTP_PORTS[1]}/: any coordinator);"
    note "its certificate is from deploy/run/pki/ca/ca.crt; sign in with the admin token:"
    note "    cat deploy/run/admin.token"
}

# Prints /metrics of the first coordinator, over HTTPS, as the admin.
metrics() {
    curl -s --cacert "$CA_CERT" -H "Authorization: Bearer $(cat "$TOKEN_FILE")" "${CONSOLE_URL}metrics"
}

start_agents() {
    local i id
    local -a tls
    for i in "${!AGENT_PORTS[@]}"; do
        id="proxy-$((i + 1))"
        mkdir -p "$RUN_DIR/$id"
        mapfile -t tls < <(tls_flags "$id")
        start "$id" "$BIN_DIR/sluice-agent" \
            --coordinators "$ENDPOINTS" \
            --listen "127.0.0.1:${AGENT_PORTS[i]}" \
            --id "$id" \
            --slots 2 \
            --state-dir "$RUN_DIR/$id" \
            --repository-root "$RUN_DIR/repo" --restore-root "$RUN_DIR/restores" \
            --transfer-rate-limit "$TRANSFER_RATE_LIMIT" \
            "${tls[@]}"
    done
    for i in "${!AGENT_PORTS[@]}"; do
        id="proxy-$((i + 1))"
        wait_until "$id on 127.0.0.1:${AGENT_PORTS[i]}" "$id" listening "$id"
    done
    wait_until "2 agents in 'sluice agent list'" proxy-1 agents_registered
}

make_vms() {
    local i pattern disk
    mkdir -p "$RUN_DIR/vms" "$RUN_DIR/repo"
    for ((i = 1; i <= VM_COUNT; i++)); do
        disk="$RUN_DIR/vms/vm-$i.qcow2"
        pattern="$(printf '0x%x%x' "$i" "$i")"
        qemu-img create -q -f qcow2 "$disk" "$VM_SIZE"
        qemu-io -f qcow2 -c "write -P $pattern 0 $VM_DATA" "$disk" >/dev/null
        note "vm-$i: $disk ($VM_SIZE qcow2, first $VM_DATA filled with $pattern)"
    done
}

write_job_file() {
    sed "s|@RUN_DIR@|$RUN_DIR|g" "$ROOT/deploy/demo-job.toml" >"$RUN_DIR/demo-job.toml"
    note "job file: deploy/run/demo-job.toml (repository $RUN_DIR/repo)"
}

# --- the demo -----------------------------------------------------------------------------------

# The CLI as the admin: the cluster CA checks the coordinators, the admin token proves who
# calls (read from its file here, never shown).
sluice() {
    SLUICE_TOKEN="$(cat "$TOKEN_FILE")" "$BIN_DIR/sluice" --endpoint "$ENDPOINTS" --ca-cert "$CA_CERT" "$@"
}

# The CLI with another token.
sluice_as() {
    local token=$1
    shift
    SLUICE_TOKEN="$token" "$BIN_DIR/sluice" --endpoint "$ENDPOINTS" --ca-cert "$CA_CERT" "$@"
}

# Shows and runs a CLI command; a failure (an unknown command too) ends the script loudly.
run() {
    printf '\n$ sluice %s\n' "$*"
    local status=0
    sluice "$@" || status=$?
    ((status == 0)) || die "'sluice $*' failed with exit status $status (its error is above)"
}

# Shows and runs a CLI command whose exit status reports a session result (a stopped session
# ends FAILED, exit status 1): prints that status; usage (2) and server (3) errors still fail.
run_reporting() {
    printf '\n$ sluice %s\n' "$*"
    local status=0
    sluice "$@" || status=$?
    ((status <= 1)) || die "'sluice $*' failed with exit status $status (its error is above)"
    note "(exit status $status: the session's result)"
}

# Starts an active full session of the demo job and prints its id: the stop demos need a
# session that is still transferring, and an incremental of unchanged disks ends at once.
start_session() {
    printf '\n$ sluice job start %s --full\n' "$JOB" >&2
    local out status=0 id
    out="$(sluice --output json job start "$JOB" --full)" || status=$?
    ((status == 0)) || die "'sluice job start $JOB --full' failed with exit status $status: $out"
    id="$(grep -o '"id": *"[^"]*"' <<<"$out" | head -n 1 | sed 's/.*: *"\(.*\)"/\1/')"
    [[ -n $id ]] || die "cannot find the session id in the output of 'sluice job start'"
    printf 'started session %s of job %s\n' "$id" "$JOB" >&2
    printf '%s\n' "$id"
}

# Waits (bounded) until some item of the session is transferring, so the stop lands mid-run.
wait_for_transfer() {
    local id=$1 tries=$((READY_TIMEOUT * 5))
    while ((tries > 0)); do
        if sluice session show "$id" 2>/dev/null | grep -qi transfer; then
            note "an item is in its transfer phase"
            return
        fi
        sleep 0.2
        tries=$((tries - 1))
    done
    note "no item reached its transfer phase within ${READY_TIMEOUT}s; stopping anyway"
}

# The state of a session as the JSON of `session show` gives it (its first "state" field).
session_state() {
    sluice --output json session show "$1" | grep -o '"state": *[^,}]*' | head -n 1
}

# stop_session ID MODE...: stops the demo job's session; a session that finished before the
# stop arrived is reported, any other failure ends the script.
stop_session() {
    local id=$1 status=0
    shift
    printf '\n$ sluice job stop %s %s\n' "$JOB" "$*"
    sluice job stop "$JOB" "$@" || status=$?
    ((status == 0)) && return
    if session_state "$id" | grep -qiE 'STOPPED|: *4$'; then
        note "session $id had already finished: the demo VMs are small"
        return
    fi
    die "'sluice job stop $JOB $*' failed with exit status $status (its error is above)"
}

demo() {
    log "Demo 1/3: back up the 6 VMs, following the session live"
    run job create -f "$RUN_DIR/demo-job.toml"
    run job list
    run job start "$JOB" --watch
    run restore-point list "$JOB"

    local id
    log "Demo 2/3: graceful stop: running VMs finish and commit, the others are not processed"
    id="$(start_session)"
    wait_for_transfer "$id"
    stop_session "$id" --graceful
    run_reporting session watch "$id"
    run session show "$id"

    log "Demo 3/3: immediate stop: running VMs are cancelled, leaving no restore point"
    id="$(start_session)"
    wait_for_transfer "$id"
    stop_session "$id" --immediately
    run_reporting session watch "$id"
    run session show "$id"

    log "Restore points: the stops kept every restore point made before them"
    run restore-point list "$JOB"
    run agent list

    log "Metrics: what Prometheus scrapes from every coordinator (here the first)"
    printf '\n$ curl -s --cacert %s -H "Authorization: Bearer $SLUICE_TOKEN" %smetrics | grep sluice_job_last_success\n' \
        deploy/run/pki/ca/ca.crt "$CONSOLE_URL"
    metrics | grep sluice_job_last_success || die "no sluice_job_last_success metric at ${CONSOLE_URL}metrics"
    note "alert when a job had no successful session for a day:"
    note "  time() - max by (job) (sluice_job_last_success_timestamp_seconds) > 86400"
    printf '\n$ curl ... %smetrics | grep -E "^sluice_(sessions_total|bytes_transferred_total)"\n' "$CONSOLE_URL"
    metrics | grep -E '^sluice_(sessions_total|bytes_transferred_total)' || true

    security_demo
}

# Who may do what: the admin token, a viewer token it creates, and what the viewer is refused.
security_demo() {
    log "Security: every call is made by a principal with a role"
    run whoami
    printf '\n$ sluice token create demo-viewer --role viewer --ttl 3600\n'
    local out viewer status=0
    out="$(sluice --output json token create demo-viewer --role viewer --ttl 3600)" ||
        die "'sluice token create' failed: $out"
    viewer="$(grep -o '"secret": *"[^"]*"' <<<"$out" | sed 's/.*: *"\(.*\)"/\1/')"
    [[ -n $viewer ]] || die "cannot find the secret in the output of 'sluice token create'"
    note "(the secret is shown only once; this demo keeps it in a shell variable)"
    run token list
    printf '\n$ SLUICE_TOKEN=<viewer token> sluice job list\n'
    sluice_as "$viewer" job list || die "a viewer token cannot list jobs"
    printf '\n$ SLUICE_TOKEN=<viewer token> sluice job start %s\n' "$JOB"
    sluice_as "$viewer" job start "$JOB" || status=$?
    ((status == 3)) || die "a viewer token started a session (exit status $status)"
    note "(refused: a viewer reads, an operator starts and stops)"
}

print_usage() {
    cat <<EOF

The local cluster keeps running (KEEP=1), over TLS:
    etcd           $ETCD_URL (data in deploy/run/etcd; client certificates required)
    coordinators   $ENDPOINTS
    console        $CONSOLE_URL (also https://127.0.0.1:${HTTP_PORTS[1]}/; JSON API under /api/v1,
                   metrics at /metrics). From another machine: ssh -L ${HTTP_PORTS[0]}:127.0.0.1:${HTTP_PORTS[0]} THIS_HOST,
                   then open $CONSOLE_URL there. Sign in with the admin token
                   (cat deploy/run/admin.token) or one made with 'sluice token create'
    agents         proxy-1 127.0.0.1:${AGENT_PORTS[0]}, proxy-2 127.0.0.1:${AGENT_PORTS[1]}
    CA and certs   deploy/run/pki/
    admin token    deploy/run/admin.token
    logs           deploy/run/*.log
    repository     deploy/run/repo

Use it:
    export SLUICE_ENDPOINT=$ENDPOINTS
    export SLUICE_CA_CERT=$CA_CERT
    export SLUICE_TOKEN=\$(cat $TOKEN_FILE)
    $BIN_DIR/sluice agent list
    $BIN_DIR/sluice job start $JOB --watch
    $BIN_DIR/sluice restore-point list $JOB

Stop it:
    bash deploy/local-cluster.sh stop
EOF
}

main() {
    case "${1:-run}" in
    run) ;;
    stop)
        stop_all
        note "the local cluster is stopped (its files stay in deploy/run until the next start)"
        return
        ;;
    -h | --help | help)
        sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        return
        ;;
    *) die "unknown command '$1' (expected nothing, 'stop' or 'help')" ;;
    esac

    cd "$ROOT"
    refuse_if_running
    log "Checking prerequisites"
    install_missing
    build
    check_ports_free

    log "Starting etcd, 2 coordinators and 2 agents under deploy/run/, all over TLS"
    rm -rf "$RUN_DIR"
    mkdir -p "$RUN_DIR"
    make_pki
    STARTED=1
    start_etcd
    start_coordinators
    start_agents

    log "Making $VM_COUNT demo VMs and the demo job"
    make_vms
    write_job_file

    demo
    log "Demo complete"
    note "the console: $CONSOLE_URL, signed in with the token in deploy/run/admin.token"
    note "(KEEP=1 leaves the cluster running to look at it)"
}

trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
main "$@"
