#!/usr/bin/env bash
# Builds the VM lane's machine: Debian 12's kernel (from its linux-image
# package, extracted, never installed), an initramfs (busybox) that loads the
# modules the root disk and the shares need, and a root filesystem made by
# debootstrap (systemd as pid 1) as an ext4 image. Cached by content under
# target/vm/<hash>/: the hash covers this script and its package list, so a
# warm run rebuilds nothing. Prints the directory.
#
# Needs (installed by tests/vm/setup.sh): debootstrap, busybox-static, cpio,
# e2fsprogs, xz-utils, kmod.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
mirror=${BERTH_VM_MIRROR:-http://deb.debian.org/debian}
suite=bookworm

# The guest's packages: systemd as init, what the tests inspect with, and for
# the CRI tests containerd, a registry and the CNI plugins.
packages=(
  systemd systemd-sysv dbus udev kmod iproute2 nftables iptables busybox-static
  ca-certificates
  containerd runc docker-registry containernetworking-plugins
)
# Modules the initramfs loads, in order (each after its dependencies, which
# are resolved from modules.dep; busybox ignores soft dependencies, so
# crc32c_generic comes before libcrc32c by hand).
modules=(
  virtio_pci virtio_blk virtio_console
  crc32c_generic crc16 ext4
  9pnet_virtio 9p
  overlay veth bridge
  libcrc32c nf_tables nft_compat nft_chain_nat nf_nat xt_MASQUERADE
)

key=$( { cat "$0"; } | sha256sum | cut -c1-16)
out="$repo/target/vm/$key"
# An uncompressed vmlinux boots ~8 s faster under TCG than the bzImage
# (qemu enters it through its PVH note): the xz stream inside vmlinuz,
# found by its magic as the kernel's scripts/extract-vmlinux does.
ensure_vmlinux() {
  [[ -f $out/vmlinux ]] && return 0
  local off
  off=$(LC_ALL=C grep -abo $'\xfd7zXZ\x00' "$out/vmlinuz" | head -1 | cut -d: -f1) || true
  [[ -n $off ]] || return 0
  tail -c +$((off + 1)) "$out/vmlinuz" | xz -dcq >"$out/vmlinux.tmp" 2>/dev/null || true
  if [[ $(head -c 4 "$out/vmlinux.tmp" | od -An -c | tr -d ' ') == 177ELF ]]; then
    mv "$out/vmlinux.tmp" "$out/vmlinux"
  else
    rm -f "$out/vmlinux.tmp"
  fi
}
if [[ -f $out/ready ]]; then
  ensure_vmlinux
  echo "$out"
  exit 0
fi
mkdir -p "$out"
work=$(mktemp -d "$repo/target/vm/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
log="$out/build.log"
: >"$log"
echo "== vm image: building in $out (log: $log)" >&2

# --- the kernel: bookworm's linux-image-amd64 dependency, not backports'.
# (madison lists the highest version first; other suites may be configured.)
bookworm_kernel() {
  apt-cache madison linux-image-amd64 |
    awk -F'|' '$3 ~ / bookworm(-security|-updates)?\// {gsub(/ /, "", $2); print $2; exit}'
}
meta_version=$(bookworm_kernel)
[[ -n $meta_version ]] || { apt-get update -qq >>"$log" 2>&1; meta_version=$(bookworm_kernel); }
[[ -n $meta_version ]] || { echo "no bookworm linux-image-amd64 in apt's lists (apt-get update?)" >&2; exit 1; }
kpkg=$(apt-cache depends "linux-image-amd64=$meta_version" | awk '/Depends: linux-image-/ {print $2; exit}')
[[ -n $kpkg ]] || { echo "cannot find bookworm's kernel package" >&2; exit 1; }
echo "kernel package: $kpkg" >>"$log"
(cd "$work" && apt-get download -q "$kpkg" >>"$log" 2>&1)
mkdir -p "$work/kernel"
dpkg-deb -x "$work"/linux-image-*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
depmod -b "$work/kernel" "$kver"
cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"
echo "$kver" >"$out/kernel-version"

# --- the initramfs: busybox, the modules, /init.
ird="$work/initramfs"
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$ird/bin/busybox"
for a in sh mount umount insmod mkdir switch_root sleep cat echo ls; do ln -s busybox "$ird/bin/$a"; done
moddir="$work/kernel/lib/modules/$kver"
declare -A seen=()
order=()
add_module() { # name: adds its dependencies, then itself
  local name=$1 line path dep
  line=$(grep -E "(^|/)${name//_/[_-]}\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -1) || true
  if [[ -z $line ]]; then
    # built into the kernel
    grep -qE "/${name//_/[_-]}\.ko" "$moddir/modules.builtin" && return 0
    echo "module $name: not found" >&2; exit 1
  fi
  path=${line%%:*}
  [[ -n ${seen[$path]:-} ]] && return 0
  for dep in ${line#*:}; do
    dep=$(basename "$dep"); dep=${dep%%.ko*}
    add_module "$dep"
  done
  seen[$path]=1
  order+=("$path")
}
for m in "${modules[@]}"; do add_module "$m"; done
: >"$ird/modules"
for path in "${order[@]}"; do
  f=$(basename "$path")
  case $f in
    *.ko.xz) xz -dc "$moddir/$path" >"$ird/lib/modules/${f%.xz}"; f=${f%.xz} ;;
    *.ko.zst) zstd -qdc "$moddir/$path" >"$ird/lib/modules/${f%.zst}"; f=${f%.zst} ;;
    *) cp "$moddir/$path" "$ird/lib/modules/$f" ;;
  esac
  echo "$f" >>"$ird/modules"
done
cat >"$ird/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules); do insmod /lib/modules/$m 2>/dev/null || echo "initramfs: insmod $m failed" >/dev/console; done
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda" >/dev/console; sleep 2; echo o >/proc/sysrq-trigger; }
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/init
INIT
chmod 0755 "$ird/init"
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1 >"$out/initramfs.gz")

# --- the root filesystem.
root="$work/rootfs"
inc=$(IFS=,; echo "${packages[*]}")
echo "== vm image: debootstrap $suite ($inc)" >&2
debootstrap --variant=minbase --include="$inc" "$suite" "$root" "$mirror" >>"$log" 2>&1 || {
  tail -20 "$log" >&2; exit 1; }
# The kernel's modules, for modprobe in the guest (nftables, bridges, ...).
mkdir -p "$root/lib/modules"
cp -a "$moddir" "$root/lib/modules/"
echo berth-vm >"$root/etc/hostname"
echo "127.0.0.1 localhost berth-vm" >"$root/etc/hosts"
cat >"$root/etc/fstab" <<'FSTAB'
/dev/vda / ext4 rw,relatime 0 1
results /mnt/results 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0
FSTAB
mkdir -p "$root/mnt/results"
# The lane's runner: the script on the results share that the host wrote for
# this run. Output to the serial console; power off when done, whatever
# happened.
cat >"$root/etc/systemd/system/berth-vm-tests.service" <<'UNIT'
[Unit]
Description=berth VM lane: the chosen tests
After=basic.target dbus.service local-fs.target
Wants=dbus.service
RequiresMountsFor=/mnt/results

[Service]
Type=exec
Delegate=yes
ExecStart=/bin/sh /mnt/results/guest.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/console
TimeoutStartSec=infinity
ExecStopPost=/bin/systemctl --no-block poweroff --force

[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/berth-vm-tests.service "$root/etc/systemd/system/multi-user.target.wants/berth-vm-tests.service"
# The serial getty's hangup cuts the runner's console output; nothing logs
# in; services the lane does not use are not started at boot.
for u in serial-getty@ttyS0.service getty@tty1.service systemd-timesyncd.service \
         containerd.service docker-registry.service apt-daily.timer apt-daily-upgrade.timer \
         e2scrub_reap.service systemd-networkd-wait-online.service; do
  ln -sf /dev/null "$root/etc/systemd/system/$u"
done
ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
rm -f "$root/etc/machine-id"; : >"$root/etc/machine-id"
passwd_root='root::0:0:root:/root:/bin/bash'
sed -i "s|^root:[^:]*:|root::|" "$root/etc/shadow" 2>/dev/null || true
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
mkfs.ext4 -q -F -L berth-vm -d "$root" "$out/rootfs.img" 3G >>"$log" 2>&1
ensure_vmlinux
date -u +%FT%TZ >"$out/ready"
# Images of older versions of this script (3 GiB sparse files each).
for old in "$repo"/target/vm/*; do
  [[ $old != "$out" && $(basename "$old") =~ ^[0-9a-f]{16}$ ]] && rm -rf "$old"
done
echo "$out"
