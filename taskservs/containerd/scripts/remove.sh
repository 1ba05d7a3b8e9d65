#!/bin/sh
# Taskserv containerd, remove: when install added the containerd package,
# stop what still runs in it, purge the packages install added and delete
# containerd's state; when containerd was there before, only put its former
# config back and restart it. Idempotent.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "containerd: manages a package and a systemd service, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

STATE="$R/var/lib/drover/containerd"
CONFIG="$R/etc/containerd/config.toml"

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"; }

if [ -f "$STATE/packages" ] && grep -qx containerd "$STATE/packages"; then
    # containerd-shim keeps containers running when containerd stops; kill
    # them first so that their mounts go away with them.
    if command -v ctr >/dev/null 2>&1 && ctr version >/dev/null 2>&1; then
        for ns in $(ctr namespaces list -q); do
            for task in $(ctr -n "$ns" tasks list -q); do
                ctr -n "$ns" tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
                ctr -n "$ns" tasks delete -f "$task" >/dev/null 2>&1 || true
            done
        done
    fi
    # shellcheck disable=SC2046 # one package name per line
    apt_get purge $(cat "$STATE/packages")
    rm -f "$CONFIG"
    rmdir "$(dirname "$CONFIG")" 2>/dev/null || true
    if ! rm -rf "$R/var/lib/containerd" "$R/run/containerd"; then
        echo "containerd: could not delete all of /var/lib/containerd (still mounted?); it goes at the next reboot or by hand" >&2
    fi
    echo "containerd: purged"
elif [ -f "$STATE/config.saved" ]; then
    if [ -f "$STATE/config.toml.orig" ]; then
        cp -p "$STATE/config.toml.orig" "$CONFIG.drover-tmp"
        mv -f "$CONFIG.drover-tmp" "$CONFIG"
    elif [ -f "$STATE/config.absent" ]; then
        rm -f "$CONFIG"
    fi
    if systemctl is-active --quiet containerd; then
        systemctl restart containerd
    fi
    echo "containerd: was installed before drover; its former config is back"
fi
rm -rf "$STATE"
