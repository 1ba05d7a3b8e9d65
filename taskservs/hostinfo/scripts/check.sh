#!/bin/sh
# Taskserv hostinfo, check: the record exists and names this server.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
: "${DROVER_SERVER:?DROVER_SERVER is not set}"
FILE="${DROVER_ROOT%/}/etc/drover/hostinfo"

if [ ! -s "$FILE" ]; then
    echo "hostinfo: $FILE is missing or empty" >&2
    exit 1
fi
if ! grep -Fqx "server=$DROVER_SERVER" "$FILE"; then
    echo "hostinfo: $FILE does not name server $DROVER_SERVER" >&2
    exit 1
fi
echo "hostinfo: ok ($FILE names $DROVER_SERVER)"
