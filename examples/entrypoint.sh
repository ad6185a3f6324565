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
# `jitter` seconds (PKGCKPT_JITTER, or a config file) that a container's first restore makes.
#
# This shell stays the parent of both processes instead of exec'ing the server: Kubernetes
# sends SIGTERM only to the container's first process, and when that process exits every
# other one is SIGKILLed. So the shell forwards SIGTERM (and SIGINT) to the server and,
# once the server has exited, stops the daemon and waits for its flush (bounded by its
# --shutdown-timeout, 10 s by default, inside the pod's 30 s grace period). tini (or
# `docker run --init`) reaps orphaned processes.
set -u

log() { echo "entrypoint: $*" >&2; }

# The process's exit status, once it is gone. `wait` returns early (128 + the signal) when
# a trapped signal arrives, and the process may exit before the shell looks again: so wait
# until it is gone, then ask once more, for bash keeps the status of a child it reaped.
wait_for() {
    local pid=$1 rc=0
    while kill -0 "$pid" 2>/dev/null; do
        wait "$pid"
    done
    wait "$pid" || rc=$?
    return "$rc"
}

# Whether $1 is a number of seconds as pkgckpt reads it (digits, a decimal fraction
# allowed: 120.5); not 1e3, -1 or "5 min", which pkgckpt would refuse or read otherwise.
is_seconds() {
    case $1 in
        '' | . | *[!0-9.]* | *.*.*) return 1 ;;
    esac
    local int=${1%%.*}
    int=${int#"${int%%[!0]*}"} # leading zeros do not count
    [ "${#int}" -le 9 ]
}

# The command, cut off by timeout(1) after $1 seconds (SIGKILL 10 s later) when there is one.
bounded() {
    local seconds=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=10 "$seconds" "$@"
    else
        "$@"
    fi
}

# 1. Restore, bounded twice: pkgckpt's own --timeout stops the installers, and timeout(1)
#    guards against anything else hanging (a hard NFS mount that stopped answering).
#    timeout(1)'s bound is what pkgckpt says the restore may take (`--print-bound`: its
#    timeout, the 10 s it has to report after it, and its jitter's longest wait, wherever
#    each is set) plus 30 s; none when the restore's timeout is 0 (no bound).
#    A failed or partial restore (exit 1 or 3) is reported; the session starts anyway.
restore_timeout=${PKGCKPT_RESTORE_TIMEOUT:-${PKGCKPT_TIMEOUT:-300}}
restore() {
    if ! is_seconds "$restore_timeout"; then
        log "PKGCKPT_RESTORE_TIMEOUT (else PKGCKPT_TIMEOUT) is '$restore_timeout', not a" \
            "number of seconds (e.g. 300 or 120.5): nothing restored; starting anyway"
        return 0
    fi
    local limit code=0
    # It reads the settings only: 30 s is more than it needs, unless a mount hangs.
    limit=$(bounded 30 pkgckpt restore --timeout "$restore_timeout" --print-bound) || code=$?
    case $code in
        0) ;;
        124 | 137)
            log "pkgckpt restore --print-bound did not answer in time: nothing restored;" \
                "starting anyway"
            return 0
            ;;
        *)
            log "pkgckpt restore failed (exit $code): nothing restored; starting anyway"
            return 0
            ;;
    esac
    # Whole seconds, or the shell's arithmetic would read it as an expression (a leading 0
    # as octal, a name as a variable, a[$(...)] as a command to run).
    case $limit in
        '' | *[!0-9]* | 0?* | ??????????*)
            log "pkgckpt restore --print-bound said '$limit', not a number of seconds:" \
                "nothing restored; starting anyway"
            return 0
            ;;
    esac
    if [ "$limit" -gt 0 ]; then
        bounded "$((limit + 30))" pkgckpt restore --timeout "$restore_timeout" || code=$?
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

# 2. The daemon in the background (it takes the baseline only if restore could not), in
#    a session of its own where setsid(1) is installed: `tini -g`, a Ctrl-C at a terminal
#    or a kill of the whole process group then reaches the server and this shell, not the
#    daemon, which is told to stop only once the server is gone (below). Started from a
#    shell without job control, setsid does not fork: $! is the daemon.
if command -v setsid >/dev/null 2>&1; then
    setsid pkgckpt daemon &
else
    pkgckpt daemon &
fi
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
# The daemon takes SIGTERM from its first line of Python on; before it, in the
# interpreter's own start, SIGTERM would end it (exit 143) with nothing looked at. A server
# that exits at once (a wrong command) would stop it there: wait until it catches SIGTERM
# or holds it blocked (across its hand-off to its own interpreter), 2 s at most.
takes_term() {
    local line mask
    [ -r "/proc/$1/status" ] || return 0 # gone, or no /proc to ask: nothing to wait for
    while read -r line; do
        case $line in
            State:*Z*) return 0 ;; # exited already
            SigBlk:* | SigCgt:*)
                mask=${line#*:}
                mask=${mask//[[:space:]]/}
                # SIGTERM is signal 15: bit 14 of the hexadecimal mask.
                case $mask in *[!0-9a-fA-F]* | '') continue ;; esac
                (((16#${mask: -4} >> 14) & 1)) && return 0
                ;;
        esac
    done <"/proc/$1/status" 2>/dev/null
    return 1
}
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
    takes_term "$daemon" && break
    sleep 0.1
done
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
