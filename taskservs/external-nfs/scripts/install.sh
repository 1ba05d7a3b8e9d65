#!/bin/sh
# Taskserv external-nfs, install: dynamic volumes on an NFS server outside
# the cluster.
#   - On every server that carries it: the NFS client (Debian's nfs-common),
#     which the kubelet needs to mount NFS volumes.
#   - On the control plane (the server named by DROVER_VAR_CONTROL_PLANE, or
#     any server with /etc/kubernetes/admin.conf when that is unset): the
#     nfs-subdir-external-provisioner Helm chart, which makes a directory on
#     DROVER_VAR_NFS_SERVER:DROVER_VAR_NFS_PATH for each volume, and its
#     StorageClass (nfs-client).
# Idempotent: apt-get and helm upgrade --install converge.
set -eu

NAME=external-nfs
: "${DROVER_ROOT:?DROVER_ROOT is not set}"
: "${DROVER_SERVER:?DROVER_SERVER is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "$NAME: installs packages on the running system, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

NFS_SERVER="${DROVER_VAR_NFS_SERVER:-}"
NFS_PATH="${DROVER_VAR_NFS_PATH:-}"
STORAGE_CLASS="${DROVER_VAR_NFS_STORAGE_CLASS:-nfs-client}"
DEFAULT_CLASS="${DROVER_VAR_NFS_DEFAULT_CLASS:-false}"
CHART_VERSION="${DROVER_VAR_NFS_PROVISIONER_CHART_VERSION:-4.0.18}"
HELM_VERSION="${DROVER_VAR_HELM_VERSION:-v3.16.3}"
CONTROL_PLANE="${DROVER_VAR_CONTROL_PLANE:-}"
STATE="$R/var/lib/drover/external-nfs"
NAMESPACE=nfs-provisioner
export KUBECONFIG="$R/etc/kubernetes/admin.conf"

# The cluster-wide part runs on one server only.
CLUSTER_PART=false
if [ -f "$KUBECONFIG" ] && { [ -z "$CONTROL_PLANE" ] || [ "$CONTROL_PLANE" = "$DROVER_SERVER" ]; }; then
    CLUSTER_PART=true
fi

fail() { echo "$NAME: $*" >&2; exit 2; }
if [ "$CLUSTER_PART" = true ]; then
    [ -n "$NFS_SERVER" ] || fail "DROVER_VAR_NFS_SERVER (host name or address of the NFS server) is not set"
    [ -n "$NFS_PATH" ] || fail "DROVER_VAR_NFS_PATH (the exported directory) is not set"
    case "$NFS_SERVER" in *[!A-Za-z0-9.:-]*) fail "DROVER_VAR_NFS_SERVER='$NFS_SERVER' is not a host name or address" ;; esac
    case "$NFS_PATH" in /*) ;; *) fail "DROVER_VAR_NFS_PATH='$NFS_PATH' is not an absolute path" ;; esac
    case "$NFS_PATH" in *[!A-Za-z0-9/._-]*) fail "DROVER_VAR_NFS_PATH='$NFS_PATH' has characters other than letters, digits and / . _ -" ;; esac
    case "$STORAGE_CLASS" in '' | *[!a-z0-9.-]*) fail "DROVER_VAR_NFS_STORAGE_CLASS='$STORAGE_CLASS' is not a Kubernetes name" ;; esac
    case "$DEFAULT_CLASS" in true | false) ;; *) fail "DROVER_VAR_NFS_DEFAULT_CLASS must be true or false" ;; esac
    case "$CHART_VERSION" in '' | *[!0-9.]*) fail "DROVER_VAR_NFS_PROVISIONER_CHART_VERSION='$CHART_VERSION' is not a version" ;; esac
    case "$HELM_VERSION" in v[0-9]*.[0-9]*.[0-9]*) ;; *) fail "DROVER_VAR_HELM_VERSION='$HELM_VERSION' is not a version like v3.16.3" ;; esac
fi

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

# The NFS client. Packages not installed yet are recorded first, so that
# remove.sh purges exactly what this taskserv added.
mkdir -p "$STATE"
apt_get update
apt_get install --simulate --no-install-recommends nfs-common |
    awk '$1 == "Inst" && substr($3, 1, 1) != "[" { print $2 }' >>"$STATE/packages"
sort -u -o "$STATE/packages" "$STATE/packages"
apt_get install --no-install-recommends nfs-common
echo "$NAME: NFS client installed"

if [ "$CLUSTER_PART" = true ]; then
    ensure_helm
    : >"$STATE/cluster-part"
    "$HELM" upgrade --install nfs-subdir-external-provisioner nfs-subdir-external-provisioner \
        --repo https://kubernetes-sigs.github.io/nfs-subdir-external-provisioner/ \
        --version "$CHART_VERSION" \
        --namespace "$NAMESPACE" --create-namespace \
        --set-string nfs.server="$NFS_SERVER" \
        --set-string nfs.path="$NFS_PATH" \
        --set-string storageClass.name="$STORAGE_CLASS" \
        --set storageClass.defaultClass="$DEFAULT_CLASS" \
        --wait --timeout 10m
    echo "$NAME: provisioner running; StorageClass $STORAGE_CLASS puts volumes on $NFS_SERVER:$NFS_PATH"
fi
