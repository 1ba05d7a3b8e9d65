#!/bin/sh
# Taskserv os, install: prepare a Debian 12 server for containers and
# Kubernetes: base packages, the overlay and br_netfilter kernel modules
# (now and at boot), IP forwarding and bridge netfilter sysctls, swap off
# (now and at boot). What remove.sh needs to undo it is recorded under
# /var/lib/drover/os before anything changes.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "os: changes the running system (packages, kernel modules, sysctls, swap), so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

PACKAGES="${DROVER_VAR_OS_PACKAGES:-ca-certificates curl gnupg jq kmod procps iproute2 iptables conntrack socat ethtool}"
STATE="$R/var/lib/drover/os"
MODULES_FILE="$R/etc/modules-load.d/drover-os.conf"
SYSCTL_FILE="$R/etc/sysctl.d/90-drover-os.conf"
FSTAB="$R/etc/fstab"
MODULES="overlay br_netfilter"
SYSCTLS="net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables"
# Prefix of the fstab swap lines this taskserv disabled; remove.sh strips it.
MARK='#drover-os# '

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"; }

# Move $1 over $2 (mode $3) unless they are equal; succeed when $2 changed.
replace_file() {
    chmod "$3" "$1"
    if cmp -s "$1" "$2"; then
        rm -f "$1"
        return 1
    fi
    mv -f "$1" "$2"
}

mkdir -p "$STATE"

# Packages. The ones not installed yet are recorded before installing, so
# that remove.sh purges exactly what this taskserv added.
apt_get update
# shellcheck disable=SC2086 # PACKAGES is a list of words
apt_get install --simulate --no-install-recommends $PACKAGES |
    awk '$1 == "Inst" && substr($3, 1, 1) != "[" { print $2 }' >>"$STATE/packages"
sort -u -o "$STATE/packages" "$STATE/packages"
# shellcheck disable=SC2086
apt_get install --no-install-recommends $PACKAGES

# Kernel modules: which ones were loaded before (first run only), then load
# them now and at every boot.
if [ ! -f "$STATE/modules.before" ]; then
    for m in $MODULES; do
        if [ -d "/sys/module/$m" ]; then echo "$m"; fi
    done >"$STATE/modules.before.tmp"
    mv -f "$STATE/modules.before.tmp" "$STATE/modules.before"
fi
mkdir -p "$(dirname "$MODULES_FILE")"
printf '# Written by drover taskserv os; removing the taskserv deletes it.\n' >"$MODULES_FILE.tmp"
for m in $MODULES; do echo "$m"; done >>"$MODULES_FILE.tmp"
replace_file "$MODULES_FILE.tmp" "$MODULES_FILE" 644 || true
for m in $MODULES; do modprobe "$m"; done

# Sysctls: their values before (first run only; the bridge ones exist only
# once br_netfilter is loaded), then 1 now and at every boot.
if [ ! -f "$STATE/sysctl.before" ]; then
    for k in $SYSCTLS; do
        printf '%s=%s\n' "$k" "$(sysctl -n "$k")"
    done >"$STATE/sysctl.before.tmp"
    mv -f "$STATE/sysctl.before.tmp" "$STATE/sysctl.before"
fi
mkdir -p "$(dirname "$SYSCTL_FILE")"
printf '# Written by drover taskserv os; removing the taskserv deletes it.\n' >"$SYSCTL_FILE.tmp"
for k in $SYSCTLS; do echo "$k = 1"; done >>"$SYSCTL_FILE.tmp"
replace_file "$SYSCTL_FILE.tmp" "$SYSCTL_FILE" 644 || true
sysctl -q -p "$SYSCTL_FILE"

# Swap: comment out the swap entries of fstab (kubelet refuses to run with
# swap on), let systemd drop the swap units it generated from them, and turn
# every swap area off now.
if [ -f "$FSTAB" ]; then
    awk -v mark="$MARK" '
        /^[[:space:]]*#/ || NF < 3 { print; next }
        $3 == "swap" { print mark $0; next }
        { print }
    ' "$FSTAB" >"$FSTAB.drover-tmp"
    if replace_file "$FSTAB.drover-tmp" "$FSTAB" 644; then
        echo "os: swap entries of $FSTAB commented out (prefix '$MARK')"
        systemctl daemon-reload
    fi
fi
swapoff -a

echo "os: ready (modules: $MODULES; sysctls: $SYSCTLS = 1; swap off)"
