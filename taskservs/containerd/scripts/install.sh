#!/bin/sh
# Taskserv containerd, install: Debian 12's containerd package, configured
# for Kubernetes: the systemd cgroup driver for runc (SystemdCgroup = true,
# matching the kubelet's default) and the pause image kubeadm expects.
# The config there was before the first install is kept for remove.sh.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "containerd: installs a package and runs a systemd service, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

# Empty: the version Debian 12 currently ships; else a Debian package
# version, e.g. 1.6.20~ds1-1+deb12u3.
VERSION="${DROVER_VAR_CONTAINERD_VERSION:-}"
PAUSE_IMAGE="${DROVER_VAR_PAUSE_IMAGE:-registry.k8s.io/pause:3.10}"
STATE="$R/var/lib/drover/containerd"
CONFIG="$R/etc/containerd/config.toml"

case "$VERSION" in
    *[!A-Za-z0-9.+~:-]*)
        echo "containerd: DROVER_VAR_CONTAINERD_VERSION='$VERSION' is not a Debian package version" >&2
        exit 2
        ;;
esac
case "$PAUSE_IMAGE" in
    '' | *[!A-Za-z0-9./:@_-]*)
        echo "containerd: DROVER_VAR_PAUSE_IMAGE='$PAUSE_IMAGE' is not an image reference" >&2
        exit 2
        ;;
esac

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"; }

mkdir -p "$STATE"

# The config before the first install: a copy, or a note that there was none.
if [ ! -f "$STATE/config.saved" ]; then
    rm -f "$STATE/config.toml.orig" "$STATE/config.absent"
    if [ -f "$CONFIG" ]; then
        cp -p "$CONFIG" "$STATE/config.toml.orig"
    else
        : >"$STATE/config.absent"
    fi
    : >"$STATE/config.saved"
fi

# The package. The packages not installed yet are recorded first, so that
# remove.sh purges exactly what this taskserv added.
pkg=containerd
if [ -n "$VERSION" ]; then
    pkg="containerd=$VERSION"
fi
apt_get update
apt_get install --simulate --no-install-recommends --allow-downgrades "$pkg" |
    awk '$1 == "Inst" && substr($3, 1, 1) != "[" { print $2 }' >>"$STATE/packages"
sort -u -o "$STATE/packages" "$STATE/packages"
# Debian's dpkg keeps our config.toml (a conffile) on upgrades.
apt_get install --no-install-recommends --allow-downgrades "$pkg"

# The config: containerd's full default, with two settings changed.
mkdir -p "$(dirname "$CONFIG")"
tmp="$CONFIG.drover-tmp"
trap 'rm -f "$tmp"' EXIT
containerd config default >"$tmp"
sed -i \
    -e 's/^\([[:space:]]*\)SystemdCgroup = false$/\1SystemdCgroup = true/' \
    -e "s|^\\([[:space:]]*\\)sandbox_image = \".*\"\$|\\1sandbox_image = \"$PAUSE_IMAGE\"|" \
    "$tmp"
if ! grep -q '^[[:space:]]*SystemdCgroup = true$' "$tmp"; then
    echo "containerd: 'containerd config default' has no runc SystemdCgroup option to turn on; this containerd version is not supported" >&2
    exit 1
fi
if ! grep -qF "sandbox_image = \"$PAUSE_IMAGE\"" "$tmp"; then
    echo "containerd: 'containerd config default' has no sandbox_image option; this containerd version is not supported" >&2
    exit 1
fi
chmod 644 "$tmp"
if cmp -s "$tmp" "$CONFIG"; then
    rm -f "$tmp"
    systemctl enable --now containerd
else
    mv -f "$tmp" "$CONFIG"
    systemctl enable containerd
    systemctl restart containerd
    echo "containerd: $CONFIG written (SystemdCgroup = true, sandbox_image = $PAUSE_IMAGE)"
fi

# Ready when the daemon answers on its socket.
i=0
until ctr version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -ge 30 ]; then
        echo "containerd: the daemon does not answer after 30 s; see journalctl -u containerd" >&2
        exit 1
    fi
    sleep 1
done
echo "containerd: running, $(containerd --version)"
