#!/usr/bin/env bash
# A journaled ext4 file system for benchmarks, in a sparse image on a loop device (direct I/O, so
# pages are not cached twice), mounted at $MNT (default /mnt/shoal-bench). Needs root.
#
#   bench/scratch-fs.sh          # make (once) and mount; prints the mount point
#   bench/scratch-fs.sh --down   # unmount and detach
#   FS=xfs bench/scratch-fs.sh   # XFS instead (reflinks: copy_file_range clones whole blocks),
#                                # at /mnt/shoal-bench-xfs; needs mkfs.xfs (Debian: xfsprogs)
#
# Why: some VMs (this project's benchmark machines among them) have an ext4 root without a
# journal. There ext4 skips inodes freed in the last seconds to minutes when it allocates one, and
# each skipped inode costs a buffer lookup: after a benchmark deletes its 10,000 files, creating
# 10,000 more scans past all of them, per file. rsync, cp, Syncthing and shoal all pay it, and it
# dominates the small-file run (perf: find_get_block_common, recently_deleted). A journaled file
# system, as on a production node, has no such scan. compare.py runs every tool on the same one.
set -euo pipefail
FS=${FS:-ext4}
case $FS in
  ext4) IMG=${IMG:-/var/tmp/shoal-bench.img}; MNT=${MNT:-/mnt/shoal-bench} ;;
  xfs) IMG=${IMG:-/var/tmp/shoal-bench-xfs.img}; MNT=${MNT:-/mnt/shoal-bench-xfs} ;;
  *) echo "FS must be ext4 or xfs" >&2; exit 2 ;;
esac
SIZE=${SIZE:-24G}

if [[ ${1:-} == --down ]]; then
  if mountpoint -q "$MNT"; then
    dev=$(findmnt -n -o SOURCE "$MNT")
    umount "$MNT"
    losetup -d "$dev"
  fi
  exit 0
fi
if mountpoint -q "$MNT"; then
  echo "$MNT"
  exit 0
fi
if [[ ! -f $IMG ]]; then
  truncate -s "$SIZE" "$IMG"
  if [[ $FS == xfs ]]; then
    mkfs.xfs -q -f -m reflink=1 "$IMG"
  else
    mkfs.ext4 -q -F "$IMG"
  fi
fi
dev=$(losetup --direct-io=on --find --show "$IMG")
mkdir -p "$MNT"
mount "$dev" "$MNT"
echo "$MNT"
