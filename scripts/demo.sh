#!/bin/sh
# The main job (`make run`): the quickstart for real on this machine,
# submitted to the orchestrator as an operator would: `drover serve` (the
# API and the scheduler on the embedded state store) in the background,
# then `drover batch submit --watch`: three local SSH hosts (sshd in their
# own namespaces, reached over SSH), hostinfo and webhello installed and
# health-checked; the pages fetched, the hosts pinged, one command run on
# all three (`drover batch exec`), the run's status and
# metrics read over HTTP, then everything rolled back (the hosts deleted)
# and the server stopped with SIGTERM, so nothing is left running.
set -eu
drover=${DROVER:-target/release/drover}
work=$(mktemp -d /tmp/drover-demo.XXXXXX)
export DROVER_STATE="$work/state.db"
port=${DROVER_DEMO_PORT:-7070}
export DROVER_API="http://127.0.0.1:$port"

echo "== drover plan workflows/wuji.k (the full deployment, planned)"
"$drover" plan workflows/wuji.k

echo
echo "== drover serve --listen 127.0.0.1:$port (state in $work)"
"$drover" serve --listen "127.0.0.1:$port" --logs "$work/server-logs" --log-format text --log-level warn &
server=$!
stop() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}
trap stop EXIT
i=0
until "$drover" batch list >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || { echo "drover serve did not come up" >&2; exit 3; }
    sleep 0.1
done

echo
echo "== drover batch submit workflows/quickstart.k --watch"
"$drover" batch submit workflows/quickstart.k --watch
run_id=$("$drover" batch list | awk 'NR == 2 { print $1 }')

echo
echo "== the three web services answer"
for addr in 127.0.10.1 127.0.10.2 127.0.10.3; do
    python3 -c "import sys, urllib.request; print(sys.argv[1], '->', urllib.request.urlopen(sys.argv[1], timeout=3).read().decode().split('<title>')[1].split('</title>')[0])" "http://$addr:18080/"
done

echo
echo "== drover ping workflows/quickstart.k (SSH, host keys verified)"
"$drover" ping workflows/quickstart.k

echo
echo "== drover batch exec workflows/quickstart.k --tag demo --watch -- 'id -un; uname -s' (one command, answers grouped)"
"$drover" batch exec workflows/quickstart.k --tag demo --watch -- 'id -un; uname -s'

echo
echo "== drover batch status $run_id; /metrics"
"$drover" batch status "$run_id" | head -n 8
# /metrics asks for a token like every endpoint: the server's own, which it
# wrote next to its state (its path on the command line, not the token).
python3 -c "import sys, urllib.request; req = urllib.request.Request(sys.argv[1] + '/metrics', headers={'Authorization': 'Bearer ' + open(sys.argv[2]).read().strip()}); print(''.join(l for l in urllib.request.urlopen(req, timeout=3).read().decode().splitlines(True) if l.startswith(('drover_runs{', 'drover_tasks_total'))), end='')" "$DROVER_API" "$work/api-token"

echo
echo "== drover batch rollback $run_id --watch"
"$drover" batch rollback "$run_id" --watch | tail -n 2
