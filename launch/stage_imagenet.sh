#!/usr/bin/env bash
# ImageNet on this GPU node's local NVMe, once per node (cluster.yaml runs it in
# worker_setup_commands; safe to run again, it returns at once when done):
#
#   IMAGENET_URI=s3://bucket/imagenet bash launch/stage_imagenet.sh
#
# $IMAGENET_URI holds train.tar and val.tar whose members are
# train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (val already sorted into class
# folders). They are streamed from S3 straight into tar, no temporary copy, and
# land in /data/imagenet: data.root=/data/imagenet in the configs.
#
# Why local NVMe: a ResNet-50 epoch reads 1.28M files; 8 GPUs at ~3,000
# images/s each need ~24k random reads/s, which local disks serve easily and a
# shared file system often does not. The instance-store disks (8 x 1 TB on
# p4d.24xlarge) are striped into one RAID 0 volume; they are wiped when the
# node stops, hence a copy per node (~150 GB, a few minutes at S3 speeds).
set -euo pipefail

dest=${IMAGENET_DIR:-/data/imagenet}
: "${IMAGENET_URI:?set IMAGENET_URI=s3://bucket/prefix holding train.tar and val.tar}"
if [[ -f $dest/.complete ]]; then echo "ImageNet already in $dest"; exit 0; fi

if ! mountpoint -q /data; then
    # NVMe instance-store disks report this model string on EC2.
    mapfile -t disks < <(lsblk -dpno NAME,MODEL | awk '/Instance Storage/ {print $1}')
    sudo mkdir -p /data
    if ((${#disks[@]} > 1)); then
        [[ -e /dev/md0 ]] || sudo mdadm --create /dev/md0 --run --level=0 --raid-devices=${#disks[@]} "${disks[@]}"
        sudo mkfs.xfs -f /dev/md0 && sudo mount /dev/md0 /data
    elif ((${#disks[@]} == 1)); then
        sudo mkfs.xfs -f "${disks[0]}" && sudo mount "${disks[0]}" /data
    fi  # no instance store: /data stays on the root volume
    sudo chown "$(id -u):$(id -g)" /data
fi

mkdir -p "$dest"
for split in train val; do
    echo "extracting $IMAGENET_URI/$split.tar into $dest"
    aws s3 cp --only-show-errors "$IMAGENET_URI/$split.tar" - | tar -x -C "$dest"
done
touch "$dest/.complete"
echo "ImageNet ready: $(find "$dest/train" -mindepth 1 -maxdepth 1 -type d | wc -l) training classes in $dest"
