#!/usr/bin/env bash
# Installs what the VM lane needs on the host, by Debian package name, only
# what is missing: qemu (from bookworm-backports, as the qemu-utils these
# machines ship is that version and bookworm's qemu 7.2 conflicts with it;
# the backports source is added if apt lacks it), debootstrap, and the tools
# tests/vm/image.sh uses.
set -euo pipefail
missing=()
for p in debootstrap cpio kmod xz-utils e2fsprogs busybox-static python3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
need_qemu=
command -v qemu-system-x86_64 >/dev/null || need_qemu=1
if [[ -z ${missing[*]:-} && -z $need_qemu ]]; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if [[ -n $need_qemu ]] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "== vm lane: adding Debian's bookworm-backports to apt's sources"
  cat >/etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
if ((${#missing[@]})); then
  echo "== vm lane: installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if [[ -n $need_qemu ]]; then
  echo "== vm lane: installing qemu-system-x86 from bookworm-backports"
  apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86
fi
