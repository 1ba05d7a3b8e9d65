#!/bin/sh
# Taskserv resolv, install: write /etc/resolv.conf from DROVER_VAR_DNS_SERVERS
# (default "1.1.1.1 9.9.9.9"), DROVER_VAR_DNS_SEARCH and
# DROVER_VAR_DNS_OPTIONS. The first run keeps what was there (a file, a
# symlink such as systemd-resolved's or resolvconf's, or nothing) under
# /var/lib/drover/resolv for remove.sh, and stops dhclient from rewriting
# the file on lease renewal.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
SERVERS="${DROVER_VAR_DNS_SERVERS:-1.1.1.1 9.9.9.9}"
SEARCH="${DROVER_VAR_DNS_SEARCH:-}"
OPTIONS="${DROVER_VAR_DNS_OPTIONS:-}"
CONF="$R/etc/resolv.conf"
STATE="$R/var/lib/drover/resolv"
HOOK_DIR="$R/etc/dhcp/dhclient-enter-hooks.d"
HOOK="$HOOK_DIR/drover-resolv"

# Validate before touching anything.
n=0
for s in $SERVERS; do
    case "$s" in
        *[!0-9A-Fa-f:.]* | *:*:*:*:*:*:*:*:*:* | .* | *.)
            echo "resolv: '$s' in DROVER_VAR_DNS_SERVERS is not an IPv4 or IPv6 address" >&2
            exit 2
            ;;
    esac
    n=$((n + 1))
done
if [ "$n" -eq 0 ]; then
    echo "resolv: DROVER_VAR_DNS_SERVERS is empty; give one to three name server addresses" >&2
    exit 2
fi
if [ "$n" -gt 3 ]; then
    echo "resolv: warning: the resolver uses only the first 3 of the $n name servers" >&2
fi
for d in $SEARCH; do
    case "$d" in
        *[!A-Za-z0-9.-]* | .* | *..*)
            echo "resolv: '$d' in DROVER_VAR_DNS_SEARCH is not a domain name" >&2
            exit 2
            ;;
    esac
done
for o in $OPTIONS; do
    case "$o" in
        *[!A-Za-z0-9:_-]*)
            echo "resolv: '$o' in DROVER_VAR_DNS_OPTIONS is not a resolv.conf option" >&2
            exit 2
            ;;
    esac
done

# Keep what was there, once. The marker file is written last, and the
# backups only ever describe the state before the first install.
mkdir -p "$STATE"
if [ ! -f "$STATE/saved" ]; then
    rm -f "$STATE/original" "$STATE/original.symlink" "$STATE/original.absent"
    if [ -L "$CONF" ]; then
        readlink "$CONF" >"$STATE/original.symlink"
    elif [ -f "$CONF" ]; then
        cp -p "$CONF" "$STATE/original"
    else
        : >"$STATE/original.absent"
    fi
    : >"$STATE/saved"
fi

# Write the file. mv replaces a symlink itself, not its target.
mkdir -p "$(dirname "$CONF")"
tmp="$CONF.drover-tmp"
trap 'rm -f "$tmp" "$HOOK.drover-tmp"' EXIT
{
    echo "# Written by drover (taskserv resolv). Removing the taskserv restores the previous file."
    if [ -n "$SEARCH" ]; then
        # shellcheck disable=SC2086 # one line, words separated by single spaces
        echo "search" $SEARCH
    fi
    for s in $SERVERS; do
        echo "nameserver $s"
    done
    if [ -n "$OPTIONS" ]; then
        # shellcheck disable=SC2086
        echo "options" $OPTIONS
    fi
} >"$tmp"
chmod 644 "$tmp"
mv -f "$tmp" "$CONF"

# dhclient rewrites resolv.conf on every lease renewal unless an enter hook
# redefines make_resolv_conf (see dhclient-script(8)).
if [ -d "$R/etc/dhcp" ]; then
    mkdir -p "$HOOK_DIR"
    cat >"$HOOK.drover-tmp" <<'HOOK'
# Written by drover (taskserv resolv): /etc/resolv.conf is managed by drover,
# so dhclient must not rewrite it. Removing the taskserv deletes this file.
make_resolv_conf() { :; }
HOOK
    chmod 644 "$HOOK.drover-tmp"
    mv -f "$HOOK.drover-tmp" "$HOOK"
fi

echo "resolv: $CONF lists $n name server(s)${SEARCH:+, search $SEARCH}"
