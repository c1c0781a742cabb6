#!/usr/bin/env bash
# Makes containerd 2.x available to the shim tests without installing it:
# Debian's unstable (sid) source with a low pin (50: nothing is ever
# installed or upgraded from it), `apt-get download -t sid containerd`, and
# `dpkg-deb -x` into $BERTH_CONTAINERD2_ROOT (default /opt/berth-test/containerd2).
# Its binaries run on Debian 12's glibc. Idempotent: a second run with the same
# candidate version does nothing but print where the binaries are.
# Prints the directory holding containerd, ctr and containerd-shim-runc-v2.
set -euo pipefail

root=${BERTH_CONTAINERD2_ROOT:-/opt/berth-test/containerd2}
sources=/etc/apt/sources.list.d/berth-sid.sources
prefs=/etc/apt/preferences.d/berth-sid

if [[ ! -f $sources || ! -f $prefs ]]; then
  cat >"$sources" <<'SRC'
# Added by berth's tests/setup-containerd2.sh: containerd 2.x for the shim tests.
# Pinned low (preferences.d/berth-sid): nothing is installed from here.
Types: deb
URIs: http://deb.debian.org/debian
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  cat >"$prefs" <<'PIN'
Package: *
Pin: release n=sid
Pin-Priority: 50
PIN
  apt-get update -qq >&2
fi

version=$(apt-cache madison containerd | awk -F'|' '$3 ~ /sid/ {gsub(/ /,"",$2); print $2; exit}')
if [[ -z $version ]]; then
  apt-get update -qq >&2
  version=$(apt-cache madison containerd | awk -F'|' '$3 ~ /sid/ {gsub(/ /,"",$2); print $2; exit}')
fi
[[ -n $version ]] || { echo "no containerd in Debian sid's package list" >&2; exit 1; }

if [[ -x $root/usr/bin/containerd && $(cat "$root/VERSION" 2>/dev/null) == "$version" ]]; then
  echo "$root/usr/bin"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root "containerd=$version" >&2)
rm -rf "$root.new"
mkdir -p "$root.new"
dpkg-deb -x "$tmp"/containerd_*.deb "$root.new"
echo "$version" >"$root.new/VERSION"
"$root.new/usr/bin/containerd" --version >&2
rm -rf "$root"
mv "$root.new" "$root"
echo "$root/usr/bin"
