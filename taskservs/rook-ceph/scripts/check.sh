#!/bin/sh
# Taskserv rook-ceph, check: the operator is available and the CephCluster
# is Ready, with Ceph's health not HEALTH_ERR.
set -eu

ROOT="${DROVER_ROOT:-/}"
export KUBECONFIG="${ROOT%/}/etc/kubernetes/admin.conf"
if [ ! -f "$KUBECONFIG" ]; then
    echo "rook-ceph: $KUBECONFIG is missing; check rook-ceph from a control plane" >&2
    exit 1
fi
kubectl -n rook-ceph rollout status deployment/rook-ceph-operator --timeout=60s
status=$(kubectl -n rook-ceph get cephcluster rook-ceph -o jsonpath='{.status.phase} {.status.ceph.health}')
phase=${status%% *}
health=${status#* }
if [ "$phase" != Ready ]; then
    echo "rook-ceph: CephCluster rook-ceph is '${phase:-unknown}', not Ready" >&2
    exit 1
fi
if [ "$health" = HEALTH_ERR ]; then
    echo "rook-ceph: Ceph reports HEALTH_ERR" >&2
    exit 1
fi
echo "rook-ceph: ok (Ready, ${health:-health unknown})"
