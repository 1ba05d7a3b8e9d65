#!/bin/sh
# Taskserv external-nfs, check: the NFS client is installed; where the
# provisioner was installed from, its Deployment is available.
set -eu

ROOT="${DROVER_ROOT:-/}"
STATE="${ROOT%/}/var/lib/drover/external-nfs"
export KUBECONFIG="${ROOT%/}/etc/kubernetes/admin.conf"

if [ ! -x /sbin/mount.nfs ]; then
    echo "external-nfs: /sbin/mount.nfs is missing (nfs-common not installed)" >&2
    exit 1
fi
if [ -f "$STATE/cluster-part" ]; then
    kubectl -n nfs-provisioner rollout status deployment/nfs-subdir-external-provisioner --timeout=60s
fi
echo "external-nfs: ok"
