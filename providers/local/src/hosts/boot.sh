# The boot of one drover host (see providers/local/src/hosts.rs). HostFleet runs
#
#   unshare --uts --mount --pid --fork --kill-child --mount-proc \
#       --propagation private -- /bin/sh -c "<this script>" drover-host \
#       HOSTNAME HOSTDIR ROOT_MOUNT SSHD CONFIG
#
# so this starts as PID 1 of the host's own PID, UTS and mount namespaces,
# with a /proc of its own. It gives the host its hostname, its root directory
# (HOSTDIR/root over ROOT_MOUNT, the host's DROVER_ROOT), its /etc/hosts,
# /etc/passwd and /tmp,
# then becomes the host's sshd, still PID 1: when it dies the kernel kills
# every other process of the host. Mounts made here are private to the host
# and vanish with its last process. Errors go to the host's sshd.log.
set -eu
name=$1 dir=$2 root_mount=$3 sshd=$4 config=$5
printf '%s\n' "$name" >/proc/sys/kernel/hostname
mount --bind "$dir/root" "$root_mount"
mount --bind "$dir/etc/hosts" /etc/hosts
# root's login shell is /bin/sh on the host (see etc_passwd in hosts.rs).
mount --bind "$dir/etc/passwd" /etc/passwd
# A /tmp of its own, as a real server has: what runs leave there (drover's
# run directories among them) goes with the host. Not when the host's own
# state lives under /tmp (a test's temporary fleet): covering /tmp would
# hide sshd's configuration, keys and authorized_keys from it.
case "$dir" in
/tmp/*) ;;
*)
    mkdir -p "$dir/tmp"
    chmod 1777 "$dir/tmp"
    mount --bind "$dir/tmp" /tmp
    ;;
esac
exec "$sshd" -D -f "$config" -E "$dir/sshd.log"
