#!/bin/sh
# Taskserv cilium, remove: uninstall the Helm release (the agents, the
# operator, their configuration) and delete the private Helm. Pods lose
# their network until another CNI is installed; each node's
# /etc/cni/net.d/05-cilium.conflist goes with the kubernetes taskserv's
# remove (or by hand). Idempotent.
set -eu

NAME=cilium
: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "$NAME: works on the cluster through the control plane's admin.conf, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

HELM_VERSION="${DROVER_VAR_HELM_VERSION:-v3.16.3}"
STATE="$R/var/lib/drover/cilium"
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

if [ ! -f "$KUBECONFIG" ]; then
    echo "$NAME: $KUBECONFIG is missing; nothing to uninstall from here"
elif [ -n "$(kubectl -n kube-system get secret -l owner=helm,name=cilium -o name)" ]; then
    mkdir -p "$STATE"
    ensure_helm
    "$HELM" uninstall cilium --namespace kube-system --wait --timeout 10m
    echo "$NAME: uninstalled"
else
    echo "$NAME: no Helm release cilium in kube-system"
fi
rm -rf "$STATE"
