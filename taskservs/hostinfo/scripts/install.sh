#!/bin/sh
# Taskserv hostinfo, install: write ${DROVER_ROOT}/etc/drover/hostinfo, a
# small key=value record of the server as drover and the host see it.
# Idempotent: the file is rewritten whole, atomically, on every run.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
: "${DROVER_SERVER:?DROVER_SERVER is not set}"
R="${DROVER_ROOT%/}"
DIR="$R/etc/drover"
FILE="$DIR/hostinfo"

mkdir -p "$DIR"
tmp="$FILE.tmp.$$"
trap 'rm -f "$tmp"' EXIT
{
    printf 'hostname=%s\n' "$(uname -n)"
    printf 'server=%s\n' "$DROVER_SERVER"
    printf 'address=%s\n' "${DROVER_ADDRESS:-}"
    printf 'run_id=%s\n' "${DROVER_RUN_ID:-}"
} >"$tmp"
chmod 644 "$tmp"
mv -f "$tmp" "$FILE"
echo "hostinfo: wrote $FILE"
