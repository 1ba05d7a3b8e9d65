#!/bin/sh
# Removes app.conf and its backup.
set -eu
root=${DROVER_ROOT%/}
rm -f "$root/etc/app/app.conf" "$root/etc/app/app.conf.previous"
rmdir "$root/etc/app" 2>/dev/null || true
echo "removed app.conf"
