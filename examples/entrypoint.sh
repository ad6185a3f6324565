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
# (seconds, default 300, fractions allowed; 0: no bound), after the random wait of up to
# PKGCKPT_JITTER seconds that a container's first restore makes.
#
# This shell stays the parent of both processes instead of exec'ing the server: Kubernetes
# sends SIGTERM only to the container's first process, and when that process exits every
# other one is SIGKILLed. So the shell forwards SIGTERM (and SIGINT) to the server and,
# once the server has exited, stops the daemon and waits for its flush (bounded by its
# --shutdown-timeout, 10 s by default, inside the pod's 30 s grace period). tini (or
# `docker run --init`) reaps orphaned processes.
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

# A number of seconds as pkgckpt reads it (digits, a decimal fraction allowed: 120.5),
# rounded up to whole seconds for timeout(1) and the shell's arithmetic; fails on anything
# else (1e3, -1, "5 min": pkgckpt would refuse it, or read it otherwise).
whole_seconds() {
    case $1 in
        '' | . | *[!0-9.]* | *.*.*) return 1 ;;
    esac
    local int=${1%%.*} frac=
    case $1 in *.*) frac=${1#*.} ;; esac
    int=${int#"${int%%[!0]*}"} # no leading zeros: the shell reads 010 as octal
    [ "${#int}" -le 9 ] || return 1
    case $frac in *[1-9]*) int=$((${int:-0} + 1)) ;; esac
    echo "${int:-0}"
}

# 1. Restore, bounded twice: pkgckpt's own --timeout stops the installers, and timeout(1)
#    guards against anything else hanging (a hard NFS mount that stopped answering).
#    timeout(1)'s bound is the restore's, plus the random wait PKGCKPT_JITTER asks for
#    before it (read here from the environment only: a `jitter` set in a config file is
#    not added), plus 30 s; none when the restore's is 0 (pkgckpt: no bound).
#    A failed or partial restore (exit 1 or 3) is reported; the session starts anyway.
restore_timeout=${PKGCKPT_RESTORE_TIMEOUT:-${PKGCKPT_TIMEOUT:-300}}
restore() {
    local bound jitter
    if ! bound=$(whole_seconds "$restore_timeout"); then
        log "PKGCKPT_RESTORE_TIMEOUT (else PKGCKPT_TIMEOUT) is '$restore_timeout', not a" \
            "number of seconds (e.g. 300 or 120.5): nothing restored; starting anyway"
        return 0
    fi
    if ! jitter=$(whole_seconds "${PKGCKPT_JITTER:-0}"); then
        log "PKGCKPT_JITTER is '$PKGCKPT_JITTER', not a number of seconds (e.g. 60 or 0.5):" \
            "nothing restored; starting anyway"
        return 0
    fi
    local code=0
    if [ "$bound" -gt 0 ] && command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=10 "$((bound + jitter + 30))" \
            pkgckpt restore --timeout "$restore_timeout" || code=$?
    else
        pkgckpt restore --timeout "$restore_timeout" || code=$?
    fi
    case $code in
        0) ;;
        3) log "some packages could not be restored (see above); starting anyway" ;;
        124 | 137) log "pkgckpt restore did not finish in time; starting anyway" ;;
        *) log "pkgckpt restore failed (exit $code); starting anyway" ;;
    esac
}
restore

# 2. The daemon in the background (it takes the baseline only if restore could not).
pkgckpt daemon &
daemon=$!

# 3. The notebook server, with SIGTERM/SIGINT forwarded to it. bash starts a background
#    command with SIGINT and SIGQUIT ignored (no job control here), which an exec'ed
#    program keeps: the subshell puts them back to their defaults first, so that SIGINT
#    (tini passes on a Ctrl-C of `docker run`) stops the server as it would in front.
(
    trap - INT QUIT
    exec "$@"
) &
server=$!

# The daemon hears of the stop only once the server is gone (below): whatever the
# server's own shutdown still installs is in its flush, and a signal the server takes
# without stopping leaves the daemon checkpointing.
trap 'kill -s TERM "$server" 2>/dev/null' TERM
trap 'kill -s INT "$server" 2>/dev/null' INT
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
