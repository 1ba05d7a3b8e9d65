#!/bin/sh
# Taskserv rook-ceph, install: the Rook operator from the release manifests
# of ROOK_VERSION (crds.yaml, common.yaml, operator.yaml), then a
# CephCluster whose OSDs take the empty disks of the CEPH_NODES, a
# replicated CephBlockPool and the StorageClass rook-ceph-block. Runs once,
# on a control plane (it needs /etc/kubernetes/admin.conf): use it in an
# operation with target cluster. The manifests applied are kept under
# /var/lib/drover/rook-ceph, so remove.sh deletes exactly them.
# Idempotent: everything is applied server-side, which converges.
set -eu

NAME=rook-ceph
: "${DROVER_ROOT:?DROVER_ROOT is not set}"
R="${DROVER_ROOT%/}"
if [ -n "$R" ]; then
    echo "$NAME: works on the cluster through the control plane's admin.conf, so it needs DROVER_ROOT=/ (got '$DROVER_ROOT')" >&2
    exit 2
fi

ROOK_VERSION="${DROVER_VAR_ROOK_VERSION:-v1.15.5}"
CEPH_IMAGE="${DROVER_VAR_CEPH_IMAGE:-quay.io/ceph/ceph:v18.2.4}"
CEPH_NODES="${DROVER_VAR_CEPH_NODES:-}"
DEVICE_FILTER="${DROVER_VAR_CEPH_DEVICE_FILTER:-}"
MON_COUNT="${DROVER_VAR_CEPH_MON_COUNT:-3}"
POOL_SIZE="${DROVER_VAR_CEPH_POOL_SIZE:-}"
STATE="$R/var/lib/drover/rook-ceph"
export KUBECONFIG="$R/etc/kubernetes/admin.conf"

fail() { echo "$NAME: $*" >&2; exit 2; }
case "$ROOK_VERSION" in
    v[0-9]*.[0-9]*.[0-9]*) ;;
    *) fail "DROVER_VAR_ROOK_VERSION='$ROOK_VERSION' is not a Rook release tag like v1.15.5" ;;
esac
case "$ROOK_VERSION" in *[!v0-9.]*) fail "DROVER_VAR_ROOK_VERSION='$ROOK_VERSION' is not a Rook release tag like v1.15.5" ;; esac
case "$CEPH_IMAGE" in '' | *[!A-Za-z0-9./:@_-]*) fail "DROVER_VAR_CEPH_IMAGE='$CEPH_IMAGE' is not an image reference" ;; esac
case "$MON_COUNT" in 1 | 3 | 5) ;; *) fail "DROVER_VAR_CEPH_MON_COUNT must be 1, 3 or 5 (an odd quorum), not '$MON_COUNT'" ;; esac
case "$DEVICE_FILTER" in *\"* | *\\*) fail "DROVER_VAR_CEPH_DEVICE_FILTER must not contain quotes or backslashes" ;; esac
nodes=0
for n in $CEPH_NODES; do
    case "$n" in *[!a-z0-9.-]*) fail "'$n' in DROVER_VAR_CEPH_NODES is not a node name" ;; esac
    nodes=$((nodes + 1))
done
if [ -z "$POOL_SIZE" ]; then
    # Three copies on three hosts, or one per storage node when fewer.
    POOL_SIZE=3
    if [ "$nodes" -gt 0 ] && [ "$nodes" -lt 3 ]; then POOL_SIZE=$nodes; fi
fi
case "$POOL_SIZE" in 1 | 2 | 3) ;; *) fail "DROVER_VAR_CEPH_POOL_SIZE must be 1, 2 or 3, not '$POOL_SIZE'" ;; esac
if [ ! -f "$KUBECONFIG" ]; then
    fail "$KUBECONFIG is missing: rook-ceph is installed cluster-wide from a control-plane node; run it in an operation with target cluster and run_on a control plane"
fi

# The release manifests, fetched once per version and kept for remove.sh.
DIR="$STATE/$ROOK_VERSION"
mkdir -p "$DIR"
for f in crds.yaml common.yaml operator.yaml; do
    if [ ! -s "$DIR/$f" ]; then
        curl -fsSL --retry 3 -o "$DIR/$f.tmp" \
            "https://raw.githubusercontent.com/rook/rook/$ROOK_VERSION/deploy/examples/$f"
        mv -f "$DIR/$f.tmp" "$DIR/$f"
    fi
done
echo "$ROOK_VERSION" >"$STATE/version"

# Server-side apply: the CRDs are too large for the last-applied annotation
# of a client-side apply, and re-applying converges.
kubectl apply --server-side --force-conflicts -f "$DIR/crds.yaml" -f "$DIR/common.yaml" -f "$DIR/operator.yaml"
kubectl -n rook-ceph rollout status deployment/rook-ceph-operator --timeout=10m

# The cluster, the pool and the storage class.
if [ "$nodes" -gt 0 ]; then use_all_nodes=false; else use_all_nodes=true; fi
if [ -n "$DEVICE_FILTER" ]; then use_all_devices=false; else use_all_devices=true; fi
if [ "$POOL_SIZE" -ge 2 ]; then safe_size=true; else safe_size=false; fi
{
    cat <<YAML
apiVersion: ceph.rook.io/v1
kind: CephCluster
metadata:
  name: rook-ceph
  namespace: rook-ceph
spec:
  cephVersion:
    image: "$CEPH_IMAGE"
  dataDirHostPath: /var/lib/rook
  mon:
    count: $MON_COUNT
    allowMultiplePerNode: false
  mgr:
    count: 2
    allowMultiplePerNode: false
  dashboard:
    enabled: true
  storage:
    useAllNodes: $use_all_nodes
    useAllDevices: $use_all_devices
YAML
    if [ -n "$DEVICE_FILTER" ]; then
        echo "    deviceFilter: \"$DEVICE_FILTER\""
    fi
    if [ "$nodes" -gt 0 ]; then
        echo "    nodes:"
        for n in $CEPH_NODES; do
            echo "      - name: \"$n\""
        done
    fi
    cat <<YAML
---
apiVersion: ceph.rook.io/v1
kind: CephBlockPool
metadata:
  name: replicapool
  namespace: rook-ceph
spec:
  failureDomain: host
  replicated:
    size: $POOL_SIZE
    requireSafeReplicaSize: $safe_size
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: rook-ceph-block
provisioner: rook-ceph.rbd.csi.ceph.com
parameters:
  clusterID: rook-ceph
  pool: replicapool
  imageFormat: "2"
  imageFeatures: layering
  csi.storage.k8s.io/provisioner-secret-name: rook-csi-rbd-provisioner
  csi.storage.k8s.io/provisioner-secret-namespace: rook-ceph
  csi.storage.k8s.io/controller-expand-secret-name: rook-csi-rbd-provisioner
  csi.storage.k8s.io/controller-expand-secret-namespace: rook-ceph
  csi.storage.k8s.io/node-stage-secret-name: rook-csi-rbd-node
  csi.storage.k8s.io/node-stage-secret-namespace: rook-ceph
  csi.storage.k8s.io/fstype: ext4
allowVolumeExpansion: true
reclaimPolicy: Delete
YAML
} >"$STATE/cluster.yaml.tmp"
mv -f "$STATE/cluster.yaml.tmp" "$STATE/cluster.yaml"
kubectl apply --server-side --force-conflicts -f "$STATE/cluster.yaml"
echo "$NAME: Rook $ROOK_VERSION operator running; CephCluster rook-ceph (${CEPH_NODES:-all nodes}, pool size $POOL_SIZE) applied, the operator is creating it"
