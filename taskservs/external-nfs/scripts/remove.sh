#!/bin/sh
# Taskserv external-nfs, remove: on the server that installed the
# provisioner, uninstall its Helm release and delete its namespace (the
# directories on the NFS server stay: the chart archives them, it never
# deletes data); everywhere, purge the packages install added. Idempotent.
set -eu

NAME=external-nfs
: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "$NAME: manages packages on the running system, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

HELM_VERSION="${DROVER_VAR_HELM_VERSION:-v3.16.3}"
STATE="$R/var/lib/drover/external-nfs"
NAMESPACE=nfs-provisioner
export KUBECONFIG="$R/etc/kubernetes/admin.conf"

# Helm, private to this taskserv (under $STATE), at $HELM_VERSION, checked
# against the SHA-256 that get.helm.sh publishes. Its cache, config and
# data stay under $STATE too, so no other Helm user on the server is touched.
export HELM_CACHE_HOME="$STATE/helm/cache" HELM_CONFIG_HOME="$STATE/helm/config" HELM_DATA_HOME="$STATE/helm/data"
HELM="$STATE/bin/helm"
ensure_helm() {
    if [ -x "$HELM" ] && [ "$("$HELM" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]; then
        return 0
    fi
    arch=$(dpkg --print-architecture)
    case "$arch" in
        amd64 | arm64) ;;
        *) echo "$NAME: no Helm build for architecture $arch" >&2; exit 2 ;;
    esac
    dir=$(mktemp -d)
    tarball="helm-$HELM_VERSION-linux-$arch.tar.gz"
    curl -fsSL --retry 3 -o "$dir/$tarball" "https://get.helm.sh/$tarball"
    curl -fsSL --retry 3 -o "$dir/$tarball.sha256sum" "https://get.helm.sh/$tarball.sha256sum"
    want=$(cut -d' ' -f1 "$dir/$tarball.sha256sum")
    have=$(sha256sum "$dir/$tarball" | cut -d' ' -f1)
    if [ -z "$want" ] || [ "$want" != "$have" ]; then
        rm -rf "$dir"
        echo "$NAME: $tarball does not match its published SHA-256" >&2
        exit 1
    fi
    tar -xzf "$dir/$tarball" -C "$dir" "linux-$arch/helm"
    mkdir -p "$(dirname "$HELM")"
    install -m 755 "$dir/linux-$arch/helm" "$HELM.tmp"
    mv -f "$HELM.tmp" "$HELM"
    rm -rf "$dir"
    echo "$NAME: helm $HELM_VERSION installed in $HELM"
}

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"; }

if [ -f "$STATE/cluster-part" ] && [ -f "$KUBECONFIG" ]; then
    if [ -n "$(kubectl -n "$NAMESPACE" get secret -l owner=helm,name=nfs-subdir-external-provisioner -o name 2>/dev/null)" ]; then
        ensure_helm
        "$HELM" uninstall nfs-subdir-external-provisioner --namespace "$NAMESPACE" --wait --timeout 10m
    fi
    kubectl delete namespace "$NAMESPACE" --ignore-not-found --timeout=5m
    echo "$NAME: provisioner uninstalled"
fi
if [ -s "$STATE/packages" ]; then
    # shellcheck disable=SC2046 # one package name per line
    apt_get purge $(cat "$STATE/packages")
fi
rm -rf "$STATE"
echo "$NAME: removed"
