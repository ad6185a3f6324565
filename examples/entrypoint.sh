#!/bin/bash
# Notebook container entrypoint: put the user's packages back, then checkpoint them while
# the notebook server runs.
#
#   COPY entrypoint.sh /usr/local/bin/pkgckpt-entrypoint
#   ENTRYPOINT ["tini", "--", "/usr/local/bin/pkgckpt-entrypoint"]
#   CMD ["jupyter", "lab", "--ip=0.0.0.0"]
#
# Settings come from the environment (PKGCKPT_STORE, PKGCKPT_KEY, PKGCKPT_ENV, ...) or
# /etc/pkgckpt/config.toml. PKGCKPT_RESTORE_TIMEOUT (else PKGCKPT_TIMEOUT) bounds the restore
# (default 300 s).
#
# This shell stays the parent of both processes instead of exec'ing the server: Kubernetes
# sends SIGTERM only to the container's first process, and when that process exits every
# other one is SIGKILLed. So the shell forwards SIGTERM to the server and to the daemon and
# waits for the daemon's flush (bounded by its --shutdown-timeout, 10 s by default, inside
# the pod's 30 s grace period). tini (or `docker run --init`) reaps orphaned processes.
set -u

log() { echo "entrypoint: $*" >&2; }

# `wait` returns early when a trapped signal arrives: wait again until the process is gone.
wait_for() {
    local pid=$1 rc=0
    wait "$pid" || rc=$?
    while kill -0 "$pid" 2>/dev/null; do
        rc=0
        wait "$pid" || rc=$?
    done
    return "$rc"
}

# 1. Restore, bounded twice: pkgckpt's own --timeout stops the installers, and timeout(1)
#    guards against anything else hanging (a hard NFS mount that stopped answering).
#    A failed or partial restore (exit 1 or 3) is reported; the session starts anyway.
restore_timeout=${PKGCKPT_RESTORE_TIMEOUT:-${PKGCKPT_TIMEOUT:-300}}
if command -v timeout >/dev/null 2>&1; then
    timeout --kill-after=10 "$((restore_timeout + 30))" \
        pkgckpt restore --timeout "$restore_timeout"
else
    pkgckpt restore --timeout "$restore_timeout"
fi
code=$?
case $code in
    0) ;;
    3) log "some packages could not be restored (see above); starting anyway" ;;
    124 | 137) log "pkgckpt restore did not finish in time; starting anyway" ;;
    *) log "pkgckpt restore failed (exit $code); starting anyway" ;;
esac

# 2. The daemon in the background (it takes the baseline only if restore could not).
pkgckpt daemon &
daemon=$!

# 3. The notebook server, with SIGTERM/SIGINT forwarded to both.
"$@" &
server=$!

forward() {
    kill -s "$1" "$server" 2>/dev/null
    kill -s TERM "$daemon" 2>/dev/null
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'kill -s HUP "$daemon" 2>/dev/null' HUP

status=0
wait_for "$server" || status=$?

# The server ended (signal or not): let the daemon flush what is pending, then exit.
kill -s TERM "$daemon" 2>/dev/null
code=0
wait_for "$daemon" || code=$?
case $code in
    0) ;;
    # It did not start: another daemon for this store and key (a systemd unit, say) ran.
    4) log "pkgckpt daemon did not start: another one checkpointed this session" ;;
    *) log "pkgckpt daemon exited $code: some changes may not be checkpointed" ;;
esac
exit "$status"
