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

# The pieces, each a set of functions.
for part in processes setup demo; do
    # shellcheck source=/dev/null
    source "$ROOT/deploy/local-cluster/$part.sh"
done

print_usage() {
    cat <<EOF

The local cluster keeps running (KEEP=1), over TLS:
    etcd           $ETCD_URL (data in deploy/run/etcd; client certificates of its own CA,
                   deploy/run/pki/etcd-ca, required)
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
