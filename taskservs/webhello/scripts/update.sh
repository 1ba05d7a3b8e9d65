#!/bin/sh
# Taskserv webhello, update: rewrite the page (DROVER_VAR_WEBHELLO_GREETING,
# revision "updated" by this task) keeping the current one as index.html.prev
# for rollback.sh, then restart the server (on the current
# DROVER_VAR_WEBHELLO_PORT), starting it if it was not running.
# Idempotent: when the page already is this task's page (a re-run after a
# crash), the backup is left as the first run made it.
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ ! -f "$PAGE" ]; then
    echo "webhello: not installed ($PAGE is missing); install it before updating" >&2
    exit 1
fi

tmp="$PAGE.tmp.$$"
trap 'rm -f "$tmp" "$PAGE.prev.tmp.$$"' EXIT
write_page updated "$tmp"
if cmp -s "$tmp" "$PAGE"; then
    echo "webhello: page already updated by this task"
else
    cp -p "$PAGE" "$PAGE.prev.tmp.$$"
    mv -f "$PAGE.prev.tmp.$$" "$PAGE.prev"
    mv -f "$tmp" "$PAGE"
    echo "webhello: page updated, previous one kept as $PAGE.prev"
fi

stop_server
start_server
