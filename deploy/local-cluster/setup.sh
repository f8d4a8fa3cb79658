# Sourced by deploy/local-cluster.sh: prerequisites, build, certificates and the cluster's processes.
# shellcheck shell=bash

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

# issue CA KIND ID [FLAGS...]: a certificate of deploy/run/pki/CA for ID in deploy/run/pki/CA-ID/
# or, of the cluster CA, in deploy/run/pki/ID/ (ID.crt, ID.key, ca.crt).
issue() {
    local ca=$1 kind=$2 id=$3 out
    shift 3
    out="$PKI/$id"
    [[ $ca == ca ]] || out="$PKI/$ca-$id"
    "$BIN_DIR/sluice" pki issue --dir "$PKI/$ca" --kind "$kind" --id "$id" --out "$out" "$@" >/dev/null
    local signed_by=""
    [[ $ca == ca ]] || signed_by=" (signed by etcd's CA)"
    note "$kind certificate$signed_by: ${out#"$ROOT/"}/$id.crt"
}

# The cluster CA, with a certificate for each coordinator and each agent, and etcd's own CA,
# with etcd's certificate and each coordinator's etcd client certificate: etcd trusts every
# certificate its CA signed, so no agent or client certificate of the cluster reaches it.
make_pki() {
    "$BIN_DIR/sluice" pki init --dir "$PKI/ca" >/dev/null
    note "cluster CA: deploy/run/pki/ca/ca.crt (its key ca.key is mode 0600)"
    "$BIN_DIR/sluice" pki init --dir "$PKI/etcd-ca" >/dev/null
    note "etcd's own CA: deploy/run/pki/etcd-ca/ca.crt"
    issue etcd-ca etcd etcd
    local i
    for i in "${!COORDINATOR_PORTS[@]}"; do
        issue ca coordinator "coord-$((i + 1))"
        issue etcd-ca coordinator "coord-$((i + 1))"
    done
    for i in "${!AGENT_PORTS[@]}"; do
        issue ca agent "proxy-$((i + 1))"
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
        --cert-file "$PKI/etcd-ca-etcd/etcd.crt" \
        --key-file "$PKI/etcd-ca-etcd/etcd.key" \
        --trusted-ca-file "$PKI/etcd-ca/ca.crt" \
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

# Coordinators reach etcd with their etcd client certificate; the first makes the admin token.
start_coordinators() {
    local i id
    local -a bootstrap tls
    for i in "${!COORDINATOR_PORTS[@]}"; do
        id="coord-$((i + 1))"
        bootstrap=()
        ((i == 0)) && bootstrap=(--bootstrap-token-file "$TOKEN_FILE")
        mapfile -t tls < <(tls_flags "$id")
        # Freed memory back at once, as deploy/systemd/sluice-coordinator.service runs it.
        start "$id" env MIMALLOC_PURGE_DELAY=0 "$BIN_DIR/sluice-coordinator" \
            --etcd "$ETCD_URL" \
            --listen "127.0.0.1:${COORDINATOR_PORTS[i]}" \
            --http-listen "127.0.0.1:${HTTP_PORTS[i]}" \
            --id "$id" \
            --lease-ttl 5 \
            "${tls[@]}" \
            --etcd-ca "$PKI/etcd-ca/ca.crt" \
            --etcd-cert "$PKI/etcd-ca-$id/$id.crt" \
            --etcd-key "$PKI/etcd-ca-$id/$id.key" \
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
        # As deploy/systemd/sluice-agent.service runs it.
        start "$id" env MIMALLOC_PURGE_DELAY=0 "$BIN_DIR/sluice-agent" \
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
