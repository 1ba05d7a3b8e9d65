#!/bin/sh
# Taskserv kubernetes, remove: take the node out of the cluster and undo
# install.sh: delete the Node object (best effort), kubeadm reset (which also
# removes a control plane's etcd member), delete the CNI configuration the
# network plugin left, purge the packages install added, and delete the
# apt source, the keyring and root's kubeconfig if install wrote it.
# Idempotent.
set -eu

: "${DROVER_ROOT:?DROVER_ROOT is not set}"
: "${DROVER_SERVER:?DROVER_SERVER is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "kubernetes: manages packages and the kubelet, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

STATE="$R/var/lib/drover/kubernetes"
KEYRING="$R/etc/apt/keyrings/kubernetes-apt-keyring.gpg"
SOURCES="$R/etc/apt/sources.list.d/kubernetes.list"
ADMIN="$R/etc/kubernetes/admin.conf"
KUBELET_CONF="$R/etc/kubernetes/kubelet.conf"
CRI="unix:///run/containerd/containerd.sock"

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -q -y -o DPkg::Lock::Timeout=300 "$@"; }

if command -v kubectl >/dev/null 2>&1; then
    # A control plane deletes its Node object with admin rights; a worker's
    # kubelet credentials may delete its own Node. Failure is only reported:
    # the cluster may be gone already.
    for kubeconfig in "$ADMIN" "$KUBELET_CONF"; do
        if [ -f "$kubeconfig" ]; then
            if kubectl --kubeconfig "$kubeconfig" --request-timeout=15s delete node "$DROVER_SERVER" --ignore-not-found --wait=false; then
                break
            fi
            echo "kubernetes: could not delete Node $DROVER_SERVER with $kubeconfig" >&2
        fi
    done
fi
if command -v kubeadm >/dev/null 2>&1; then
    kubeadm reset -f --cri-socket "$CRI"
fi
# kubeadm reset leaves the CNI configuration and root's kubeconfig behind.
rm -rf "$R/etc/cni/net.d"
if [ -f "$STATE/root-kubeconfig" ]; then
    rm -f "$R/root/.kube/config"
    rmdir "$R/root/.kube" 2>/dev/null || true
fi

if [ -s "$STATE/packages" ]; then
    apt-mark unhold kubelet kubeadm kubectl >/dev/null 2>&1 || true
    # shellcheck disable=SC2046 # one package name per line
    apt_get purge --allow-change-held-packages $(cat "$STATE/packages")
    rm -rf "$R/etc/kubernetes" "$R/var/lib/kubelet"
fi
rm -f "$SOURCES" "$KEYRING"
rm -rf "$STATE"
echo "kubernetes: removed from $DROVER_SERVER"
