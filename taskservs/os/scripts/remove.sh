#!/bin/sh
# Taskserv os, remove: undo install.sh from what it recorded under
# /var/lib/drover/os: swap entries back in fstab and swap on, sysctls back to
# their former values, modules it loaded unloaded when nothing uses them,
# packages it added purged. Idempotent.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "os: changes the running system, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

STATE="$R/var/lib/drover/os"
MODULES_FILE="$R/etc/modules-load.d/drover-os.conf"
SYSCTL_FILE="$R/etc/sysctl.d/90-drover-os.conf"
FSTAB="$R/etc/fstab"
MODULES="overlay br_netfilter"
MARK='#drover-os# '

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"; }

# Swap entries back, swap on.
if [ -f "$FSTAB" ] && grep -q "^$MARK" "$FSTAB"; then
    sed "s/^$MARK//" "$FSTAB" >"$FSTAB.drover-tmp"
    chmod 644 "$FSTAB.drover-tmp"
    mv -f "$FSTAB.drover-tmp" "$FSTAB"
    systemctl daemon-reload
    if ! swapon -a; then
        echo "os: swapon -a failed; the fstab entries are back, swap stays off until they work" >&2
    fi
fi

# Sysctls back to the values they had before install.
rm -f "$SYSCTL_FILE"
if [ -f "$STATE/sysctl.before" ]; then
    while IFS='=' read -r key value; do
        [ -n "$key" ] || continue
        if [ -e "/proc/sys/$(echo "$key" | tr . /)" ]; then
            sysctl -q -w "$key=$value"
        fi
    done <"$STATE/sysctl.before"
    rm -f "$STATE/sysctl.before"
fi

# Modules that install loaded: not at boot any more, and unloaded now unless
# something still uses them (containers' overlay mounts, for instance).
rm -f "$MODULES_FILE"
if [ -f "$STATE/modules.before" ]; then
    for m in $MODULES; do
        if ! grep -qx "$m" "$STATE/modules.before" && [ -d "/sys/module/$m" ]; then
            if ! modprobe -r "$m" 2>/dev/null; then
                echo "os: kernel module $m is in use or built in; it stays loaded until reboot" >&2
            fi
        fi
    done
    rm -f "$STATE/modules.before"
fi

# Packages this taskserv added.
if [ -s "$STATE/packages" ]; then
    # shellcheck disable=SC2046 # one package name per line
    apt_get purge $(cat "$STATE/packages")
fi
rm -rf "$STATE"
echo "os: removed"
