#!/bin/sh
# Taskserv webhello, install: write ${DROVER_ROOT}/srv/webhello/index.html
# (it names DROVER_SERVER) and serve it with python3's http.server on
# DROVER_ADDRESS:DROVER_VAR_WEBHELLO_PORT, detached, pid in
# ${DROVER_ROOT}/run/webhello.pid, output in ${DROVER_ROOT}/var/log/webhello.log.
# Idempotent: a server that already runs (per the pid file) is left alone.
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

mkdir -p "$DOCROOT"
tmp="$PAGE.tmp.$$"
trap 'rm -f "$tmp"' EXIT
write_page installed "$tmp"
mv -f "$tmp" "$PAGE"
# A fresh install has nothing an update could roll back to.
rm -f "$PAGE.prev"

if pid=$(server_pid); then
    echo "webhello: already running (pid $pid), serving $URL"
else
    start_server
fi
