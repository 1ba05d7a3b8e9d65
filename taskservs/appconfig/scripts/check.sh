#!/bin/sh
# Healthy when app.conf is installed, owner-only, and names this server.
set -eu
conf="${DROVER_ROOT%/}/etc/app/app.conf"
test -s "$conf"
perms=$(stat -c %a "$conf")
[ "$perms" = "600" ] || { echo "app.conf has mode $perms, expected 600" >&2; exit 1; }
grep -q "for $DROVER_SERVER," "$conf" || { echo "app.conf is not this server's" >&2; exit 1; }
grep -q '^api_token = ' "$conf"
echo "app.conf ok"
