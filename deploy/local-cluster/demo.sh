# Sourced by deploy/local-cluster.sh: the guided demo run against the started cluster.
# shellcheck shell=bash

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
