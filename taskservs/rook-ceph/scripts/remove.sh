#!/bin/sh
# Taskserv rook-ceph, remove: tear Ceph down the way Rook documents it and
# DESTROY ITS DATA: delete the StorageClass and the pool (refused by Rook
# while volumes still use it), set the CephCluster's cleanupPolicy so the
# operator wipes /var/lib/rook and the OSD disks of every node, delete the
# CephCluster, wait for the cleanup jobs, then delete the operator and the
# CRDs from the manifests install applied. Idempotent.
set -eu

NAME=rook-ceph
: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "$NAME: works on the cluster through the control plane's admin.conf, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

STATE="$R/var/lib/drover/rook-ceph"
export KUBECONFIG="$R/etc/kubernetes/admin.conf"

if [ ! -f "$KUBECONFIG" ]; then
    echo "$NAME: $KUBECONFIG is missing; nothing to remove from here"
    rm -rf "$STATE"
    exit 0
fi

crd_present() { kubectl get crd "$1" >/dev/null 2>&1; }

kubectl delete storageclass rook-ceph-block --ignore-not-found
if crd_present cephblockpools.ceph.rook.io; then
    if ! kubectl -n rook-ceph delete cephblockpool replicapool --ignore-not-found --timeout=5m; then
        echo "$NAME: the pool replicapool is not going away; volumes (PVCs of storage class rook-ceph-block) still use it. Delete them, then remove again." >&2
        exit 1
    fi
fi
if crd_present cephclusters.ceph.rook.io && kubectl -n rook-ceph get cephcluster rook-ceph >/dev/null 2>&1; then
    kubectl -n rook-ceph patch cephcluster rook-ceph --type merge \
        -p '{"spec":{"cleanupPolicy":{"confirmation":"yes-really-destroy-data"}}}'
    kubectl -n rook-ceph delete cephcluster rook-ceph --timeout=15m
    # The operator runs one cleanup job per node once the cluster is gone.
    i=0
    while [ -z "$(kubectl -n rook-ceph get jobs -l app=rook-ceph-cleanup -o name 2>/dev/null)" ] && [ "$i" -lt 12 ]; do
        sleep 5
        i=$((i + 1))
    done
    if [ -n "$(kubectl -n rook-ceph get jobs -l app=rook-ceph-cleanup -o name 2>/dev/null)" ]; then
        if ! kubectl -n rook-ceph wait --for=condition=complete job -l app=rook-ceph-cleanup --timeout=15m; then
            echo "$NAME: cleanup jobs did not all complete; /var/lib/rook or OSD disks may need wiping by hand on some nodes" >&2
        fi
    else
        echo "$NAME: no cleanup jobs appeared; /var/lib/rook and the OSD disks may need wiping by hand (see Rook's cleanup guide)" >&2
    fi
fi

version=$(cat "$STATE/version" 2>/dev/null || true)
DIR="$STATE/$version"
if [ -n "$version" ] && [ -s "$DIR/operator.yaml" ]; then
    kubectl delete --ignore-not-found --timeout=10m -f "$DIR/operator.yaml"
    kubectl delete --ignore-not-found --timeout=10m -f "$DIR/common.yaml"
    kubectl delete --ignore-not-found --timeout=10m -f "$DIR/crds.yaml"
else
    echo "$NAME: the manifests install applied are not recorded here; the operator and CRDs, if any, stay" >&2
fi
rm -rf "$STATE"
echo "$NAME: removed"
