#!/bin/sh
# Taskserv resolv, check: /etc/resolv.conf is drover's and lists exactly
# the name servers of DROVER_VAR_DNS_SERVERS, in order.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
CONF="${DROVER_ROOT%/}/etc/resolv.conf"
SERVERS="${DROVER_VAR_DNS_SERVERS:-1.1.1.1 9.9.9.9}"

if ! grep -q '^# Written by drover (taskserv resolv)' "$CONF" 2>/dev/null; then
    echo "resolv: $CONF is missing or was not written by drover" >&2
    exit 1
fi
want=$(for s in $SERVERS; do echo "nameserver $s"; done)
have=$(grep '^nameserver ' "$CONF" || true)
if [ "$want" != "$have" ]; then
    echo "resolv: $CONF lists other name servers than DROVER_VAR_DNS_SERVERS ($SERVERS):" >&2
    printf '%s\n' "$have" >&2
    exit 1
fi
echo "resolv: ok"
