#!/bin/sh
# Taskserv os, check: modules loaded, sysctls at 1, no swap in use.
set -eu

MODULES="overlay br_netfilter"
SYSCTLS="net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables"

ok=1
for m in $MODULES; do
    if [ ! -d "/sys/module/$m" ]; then
        echo "os: kernel module $m is not loaded" >&2
        ok=0
    fi
done
for k in $SYSCTLS; do
    v=$(sysctl -n "$k" 2>/dev/null || echo unset)
    if [ "$v" != 1 ]; then
        echo "os: $k is $v, want 1" >&2
        ok=0
    fi
done
# /proc/swaps has a header line, then one line per active swap area.
if [ "$(wc -l </proc/swaps)" -gt 1 ]; then
    echo "os: swap is on:" >&2
    cat /proc/swaps >&2
    ok=0
fi
if [ "$ok" = 1 ]; then
    echo "os: ok"
else
    exit 1
fi
