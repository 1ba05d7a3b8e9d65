#!/bin/sh
# Taskserv cilium, check: the agent DaemonSet is ready on every node and the
# operator is available (what `cilium status --wait` waits for).
set -eu

ROOT="${DROVER_ROOT:-/}"
export KUBECONFIG="${ROOT%/}/etc/kubernetes/admin.conf"
if [ ! -f "$KUBECONFIG" ]; then
    echo "cilium: $KUBECONFIG is missing; check cilium from a control plane" >&2
    exit 1
fi
kubectl -n kube-system rollout status daemonset/cilium --timeout=60s
kubectl -n kube-system rollout status deployment/cilium-operator --timeout=60s
echo "cilium: ok"
