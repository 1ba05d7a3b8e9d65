# Shared by the install, update, rollback and remove scripts of the webhello taskserv:
# settings from the environment (checked), and the functions that fetch the
# page, write it, and start and stop the server. Sourced, never run: drover
# sends the whole scripts/ folder with every task, so it sits next to them.
# shellcheck shell=sh
: "${DROVER_ROOT:?DROVER_ROOT is not set}"
: "${DROVER_SERVER:?DROVER_SERVER is not set}"
R="${DROVER_ROOT%/}"
ADDRESS="${DROVER_ADDRESS:-127.0.0.1}"
PORT="${DROVER_VAR_WEBHELLO_PORT:-8080}"
DOCROOT="$R/srv/webhello"
PAGE="$DOCROOT/index.html"
PIDFILE="$R/run/webhello.pid"
LOG="$R/var/log/webhello.log"

case "$PORT" in
    '' | *[!0-9]*)
        echo "webhello: DROVER_VAR_WEBHELLO_PORT='$PORT' is not a port number" >&2
        exit 2
        ;;
esac
if [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
    echo "webhello: DROVER_VAR_WEBHELLO_PORT=$PORT is not between 1 and 65535" >&2
    exit 2
fi
case "$ADDRESS" in
    *:*) URL="http://[$ADDRESS]:$PORT/" ;;
    *) URL="http://$ADDRESS:$PORT/" ;;
esac

# Fetch $URL and print the page. fetch_page PIDFILE WAIT PAGE retries for up
# to WAIT seconds until the answer is byte for byte the file PAGE (so another
# server that holds the same address and port is not taken for ours), and
# gives up early once the process in PIDFILE has exited. Proxy variables are
# ignored: the page is on this host.
fetch_page() {
    python3 - "$URL" "${1:-}" "${2:-0}" "${3:-}" <<'PY'
import os, sys, time, urllib.request

url, pidfile, wait, expected = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + wait

def exited(pidfile):
    try:
        with open(pidfile) as f:
            text = f.read().strip()
    except FileNotFoundError:
        return False  # not written yet
    if not text:
        return False
    try:
        with open(f"/proc/{int(text)}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return True

while True:
    try:
        with opener.open(url, timeout=3) as response:
            body = response.read()
        if not expected or body == open(expected, "rb").read():
            sys.stdout.write(body.decode("utf-8", "replace"))
            sys.exit(0)
        error = "answered with another page"
    except Exception as e:  # connection refused, timeout, HTTP error
        error = e
    if pidfile and exited(pidfile):
        print("webhello: the server process exited", file=sys.stderr)
        sys.exit(1)
    if time.monotonic() >= deadline:
        print(f"webhello: {url}: {error}", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.1)
PY
}

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

# Start python3's http.server on $ADDRESS:$PORT, detached: setsid gives it a
# session and process group of its own (stop_server signals the group, and
# nothing is tied to the SSH session that ran this script); all three
# standard streams are redirected so the session can close. The inner shell
# writes its pid, which exec hands on to python3.
start_server() {
    mkdir -p "$R/run" "$(dirname "$LOG")"
    rm -f "$PIDFILE"
    # shellcheck disable=SC2016 # $$, $1 and $@ belong to the inner shell
    setsid sh -c 'echo "$$" >"$1"; shift; exec "$@"' webhello "$PIDFILE" \
        nohup python3 -m http.server "$PORT" --bind "$ADDRESS" --directory "$DOCROOT" \
        </dev/null >>"$LOG" 2>&1 &
    if ! fetch_page "$PIDFILE" 10 "$PAGE" >/dev/null; then
        echo "webhello: no answer on $URL; last lines of $LOG:" >&2
        tail -n 5 "$LOG" >&2 || true
        stop_server >/dev/null
        return 1
    fi
    echo "webhello: serving $DOCROOT on $URL (pid $(cat "$PIDFILE"))"
}

html_escape() {
    printf '%s' "$1" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' -e 's/"/\&quot;/g'
}

# Write the page to $2; $1 says what wrote it (installed, updated). The task
# id makes an update's page differ from the install's, and keeps a re-run of
# the same task byte for byte the same.
write_page() {
    server=$(html_escape "$DROVER_SERVER")
    greeting=$(html_escape "${DROVER_VAR_WEBHELLO_GREETING:-Hello}")
    where=$(html_escape "$ADDRESS:$PORT")
    task=$(html_escape "${DROVER_TASK_ID:-}")
    cat >"$2" <<HTML
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>webhello on $server</title></head>
<body>
<h1>$greeting from $server</h1>
<p>Served by the drover taskserv webhello on $where.</p>
<p>Revision: $1 by task $task.</p>
</body>
</html>
HTML
    chmod 644 "$2"
}
