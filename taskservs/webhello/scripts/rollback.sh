#!/bin/sh
# Taskserv webhello, rollback: undo update.sh by putting back the page it
# kept as index.html.prev, then restart the server. Idempotent: with no
# backup left there is nothing to roll back, and the script says so.
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

if [ -f "$PAGE.prev" ]; then
    mv -f "$PAGE.prev" "$PAGE"
    echo "webhello: previous page restored"
else
    echo "webhello: no previous page kept, nothing to roll back"
fi

if [ -f "$PAGE" ]; then
    stop_server
    start_server
fi
