#!/bin/sh
# Taskserv webhello, remove: stop the server (its whole process group) and
# delete the page, the pid file and the log. Idempotent.
set -eu
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

stop_server
rm -rf "$DOCROOT"
rm -f "$LOG"
# Leave directories other software may share unless they are now empty.
rmdir "$R/srv" "$R/run" "$(dirname "$LOG")" 2>/dev/null || true
echo "webhello: removed"
