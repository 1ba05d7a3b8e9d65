#!/bin/sh
# Taskserv kubernetes, check: the kubelet runs, the node is registered in
# the cluster, and on a control plane the API answers /readyz.
set -eu

: "${DROVER_SERVER:?DROVER_SERVER is not set}"
ROOT="${DROVER_ROOT:-/}"
ADMIN="${ROOT%/}/etc/kubernetes/admin.conf"
KUBELET_CONF="${ROOT%/}/etc/kubernetes/kubelet.conf"

if ! systemctl is-active --quiet kubelet; then
    echo "kubernetes: the kubelet is not running" >&2
    exit 1
fi
if [ -f "$ADMIN" ]; then
    if ! kubectl --kubeconfig "$ADMIN" --request-timeout=10s get --raw=/readyz >/dev/null; then
        echo "kubernetes: the API does not answer /readyz" >&2
        exit 1
    fi
    kubeconfig="$ADMIN"
elif [ -f "$KUBELET_CONF" ]; then
    kubeconfig="$KUBELET_CONF"
else
    echo "kubernetes: this node has not joined a cluster (no $KUBELET_CONF)" >&2
    exit 1
fi
if ! ready=$(kubectl --kubeconfig "$kubeconfig" --request-timeout=10s get node "$DROVER_SERVER" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'); then
    echo "kubernetes: node $DROVER_SERVER is not registered in the cluster" >&2
    exit 1
fi
# Ready needs a network plugin (the cilium taskserv); before it, NotReady is
# expected, so it is reported, not failed.
echo "kubernetes: ok ($DROVER_SERVER registered, Ready=${ready:-unknown})"
