#!/bin/sh
# Taskserv cilium, install: the Cilium CNI for the whole cluster, from its
# Helm chart (https://helm.cilium.io/, release "cilium" in kube-system),
# with IPAM mode "kubernetes" so pods get addresses from the node pod CIDRs
# kubeadm allocates from POD_CIDR. Runs once, on a control plane (it needs
# /etc/kubernetes/admin.conf): use it in an operation with target cluster.
# Idempotent: helm upgrade --install converges to the chart version and
# values asked for.
set -eu

NAME=cilium
: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "$NAME: works on the cluster through the control plane's admin.conf, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

CILIUM_VERSION="${DROVER_VAR_CILIUM_VERSION:-1.16.5}"
HELM_VERSION="${DROVER_VAR_HELM_VERSION:-v3.16.3}"
IPAM_MODE="${DROVER_VAR_CILIUM_IPAM_MODE:-kubernetes}"
STATE="$R/var/lib/drover/cilium"
export KUBECONFIG="$R/etc/kubernetes/admin.conf"

case "$CILIUM_VERSION" in
    '' | *[!0-9.]*) echo "$NAME: DROVER_VAR_CILIUM_VERSION='$CILIUM_VERSION' is not a version like 1.16.5" >&2; exit 2 ;;
esac
case "$HELM_VERSION" in
    v[0-9]*.[0-9]*.[0-9]*) ;;
    *) echo "$NAME: DROVER_VAR_HELM_VERSION='$HELM_VERSION' is not a version like v3.16.3" >&2; exit 2 ;;
esac
case "$IPAM_MODE" in
    kubernetes | cluster-pool) ;;
    *) echo "$NAME: DROVER_VAR_CILIUM_IPAM_MODE='$IPAM_MODE' is not kubernetes or cluster-pool" >&2; exit 2 ;;
esac
if [ ! -f "$KUBECONFIG" ]; then
    echo "$NAME: $KUBECONFIG is missing: cilium is installed cluster-wide from a control-plane node; run it in an operation with target cluster and run_on a control plane" >&2
    exit 2
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

mkdir -p "$STATE"
ensure_helm
"$HELM" upgrade --install cilium cilium \
    --repo https://helm.cilium.io/ --version "$CILIUM_VERSION" \
    --namespace kube-system \
    --set ipam.mode="$IPAM_MODE" \
    --wait --timeout 10m
kubectl -n kube-system rollout status daemonset/cilium --timeout=5m
kubectl -n kube-system rollout status deployment/cilium-operator --timeout=5m
echo "$NAME: Cilium $CILIUM_VERSION runs on every node"
