#!/usr/bin/env bash
# Prints the CRIU command the checkpoint tests (and berthd, through
# BERTH_CRIU) use. Debian 12's criu (3.17) when `criu check` passes with it;
# otherwise (3.17 cannot read the vDSO of kernels newer than it knows, e.g.
# 6.18: "Unexpected rt vDSO area bounds") Debian unstable's criu, extracted
# with the libraries it needs (glibc 2.38+ among them) into
# $BERTH_CRIU_ROOT (default /opt/berth-test/criu) and run through that
# glibc's own loader by a wrapper script: nothing is installed from sid.
# Uses the sid source tests/setup-containerd2.sh adds (pinned low).
# Idempotent. Exits 1 (printing why) when no CRIU works here.
set -euo pipefail

if command -v criu >/dev/null && criu check 2>&1 | grep -q "Looks good"; then
  command -v criu
  exit 0
fi

root=${BERTH_CRIU_ROOT:-/opt/berth-test/criu}
wrapper=$root/criu
if [[ -x $wrapper ]] && "$wrapper" check 2>&1 | grep -q "Looks good"; then
  echo "$wrapper"
  exit 0
fi

if ! apt-cache madison criu | grep -q sid; then
  # The sid source (pinned low) comes from the containerd 2.x setup.
  "$(dirname "$0")/setup-containerd2.sh" >/dev/null
fi
# criu and every library it links that Debian 12 lacks or has too old.
packages=(criu libcompel1 libc6 libnet9 libnl-3-200 libnftables1 libgnutls30t64
  libprotobuf-c1 libbsd0 libnftnl11 libmnl0 libjansson4 libxtables12 libnettle8t64
  libhogweed6t64 libidn2-0 libunistring5 libtasn1-6 libp11-kit0 libgmp10 libffi8
  libmd0 libuuid1 libedit2 libtinfo6 libbpf1 libelf1t64 zlib1g libzstd1)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root -t sid "${packages[@]}" >&2)
rm -rf "$root.new"
mkdir -p "$root.new/root"
for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$root.new/root"; done
lib=$root/root/usr/lib/x86_64-linux-gnu
cat >"$root.new/criu" <<WRAP
#!/bin/sh
# sid's criu on sid's glibc (tests/setup-criu.sh).
exec $lib/ld-linux-x86-64.so.2 --library-path $lib:$root/root/lib/x86_64-linux-gnu $root/root/usr/sbin/criu "\$@"
WRAP
chmod 755 "$root.new/criu"
rm -rf "$root"
mv "$root.new" "$root"
if ! "$wrapper" check 2>&1 | grep -q "Looks good"; then
  echo "CRIU does not work on this host: $("$wrapper" check 2>&1 | grep -m1 Error)" >&2
  exit 1
fi
echo "$wrapper"
