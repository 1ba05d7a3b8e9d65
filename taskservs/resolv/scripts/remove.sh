#!/bin/sh
# Taskserv resolv, remove: put back what /etc/resolv.conf was before the
# first install (a file, a symlink, or nothing) and delete the dhclient
# hook. Idempotent.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
CONF="$R/etc/resolv.conf"
STATE="$R/var/lib/drover/resolv"
HOOK="$R/etc/dhcp/dhclient-enter-hooks.d/drover-resolv"

tmp="$CONF.drover-tmp"
trap 'rm -f "$tmp"' EXIT
if [ -f "$STATE/saved" ]; then
    if [ -f "$STATE/original.symlink" ]; then
        rm -f "$tmp"
        ln -s "$(cat "$STATE/original.symlink")" "$tmp"
        mv -f "$tmp" "$CONF"
        echo "resolv: $CONF is a symlink to $(cat "$STATE/original.symlink") again"
    elif [ -f "$STATE/original" ]; then
        cp -p "$STATE/original" "$tmp"
        mv -f "$tmp" "$CONF"
        echo "resolv: previous $CONF restored"
    elif [ -f "$STATE/original.absent" ]; then
        rm -f "$CONF"
        echo "resolv: $CONF removed (there was none before)"
    fi
fi
rm -f "$HOOK"
rm -rf "$STATE"
