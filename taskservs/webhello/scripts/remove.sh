#!/bin/sh
# Taskserv webhello, remove: stop the server (its whole process group) and
# delete the page, the pid file and the log. Idempotent.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
DOCROOT="$R/srv/webhello"
PIDFILE="$R/run/webhello.pid"
LOG="$R/var/log/webhello.log"

# Print the pid of this server's webhello process; fail when none runs. Its
# command line must name this DOCROOT, so neither a recycled pid nor the
# webhello of another server on the same machine is taken for ours.
server_pid() {
    [ -s "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\000' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -Fq -- "--directory $DOCROOT" || return 1
    echo "$pid"
}

# Stop the server and its process group: TERM, then KILL after 10 s.
stop_server() {
    if pid=$(server_pid); then
        kill -s TERM -- "-$pid" 2>/dev/null || kill -s TERM "$pid" 2>/dev/null || true
        n=0
        while kill -0 "$pid" 2>/dev/null; do
            n=$((n + 1))
            if [ "$n" -gt 10 ]; then
                kill -s KILL -- "-$pid" 2>/dev/null || kill -s KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 1
        done
        echo "webhello: stopped pid $pid"
    fi
    rm -f "$PIDFILE"
}

stop_server
rm -rf "$DOCROOT"
rm -f "$LOG"
# Leave directories other software may share unless they are now empty.
rmdir "$R/srv" "$R/run" "$(dirname "$LOG")" 2>/dev/null || true
echo "webhello: removed"
