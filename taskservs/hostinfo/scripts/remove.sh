#!/bin/sh
# Taskserv hostinfo, remove: delete what install.sh wrote. Idempotent.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
DIR="$R/etc/drover"

rm -f "$DIR/hostinfo"
# The directory is shared with other drover files; drop it only when empty.
rmdir "$DIR" 2>/dev/null || true
echo "hostinfo: removed $DIR/hostinfo"
