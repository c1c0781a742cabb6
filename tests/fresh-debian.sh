#!/usr/bin/env bash
# The README's first set-up command on a fresh Debian 12, as a CI stage.
#
# Makes a minimal Debian 12 tree with debootstrap (cached under
# target/fresh-debian/ by the inputs that make it, so warm runs skip it),
# mounts the host's Rust toolchain into it read-only, copies in a clean
# archive of the source, and runs the build part of the README's first
# command in it exactly as the README writes it, so that a package the
# build needs but the README does not install fails here. Then it starts
# the berthd that build made, as the README does, checks that it answers
# CRI Version (the host-built `daemon_grpc` test client, on the tree's
# socket) and stops it.
#
# Everything runs in a private mount namespace: the mounts go away with
# this script however it ends; the EXIT trap also unmounts and stops
# berthd in order.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [[ ${1:-} != --in-namespace ]]; then
  exec unshare --mount --propagation private -- "$repo/tests/fresh-debian.sh" --in-namespace
fi

started=$(date +%s)
if ! command -v rustup >/dev/null; then
  echo "fresh-debian: skipped: the host's Rust toolchain is not rustup's, which this stage mounts" >&2
  exit 0
fi
suite=bookworm
mirror=http://deb.debian.org/debian
variant=minbase
cache=$repo/target/fresh-debian
mkdir -p "$cache"

# --- the base tree, cached by what makes it ---------------------------------
key=$(printf '%s\n' "$suite" "$variant" "$mirror" "$(dpkg-query -W -f='${Version}' debootstrap)" \
  "$(uname -m)" | sha256sum | cut -c1-16)
base=$cache/base-$key
if [[ ! -e $base/.complete ]]; then
  echo "== fresh-debian: debootstrap --variant=$variant $suite ($mirror)"
  rm -rf "$base" "$base.tmp"
  t0=$(date +%s)
  debootstrap --variant="$variant" "$suite" "$base.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
    tail -n 30 "$cache/debootstrap.log" >&2
    exit 1
  }
  mv "$base.tmp" "$base"
  touch "$base/.complete"
  echo "== fresh-debian: debootstrap took $(($(date +%s) - t0)) s"
  # Older trees of other inputs are no longer used.
  find "$cache" -maxdepth 1 -name 'base-*' ! -name "base-$key" -exec rm -rf {} +
else
  echo "== fresh-debian: cached Debian $suite tree $base"
fi

# --- a throw-away tree over it ----------------------------------------------
run=$cache/run
berthd_pid=
cleanup() {
  local rc=$?
  if [[ -n $berthd_pid ]] && kill -0 "$berthd_pid" 2>/dev/null; then
    kill -TERM "$berthd_pid" 2>/dev/null || true
    wait "$berthd_pid" 2>/dev/null || true
  fi
  # Innermost first; the namespace drops whatever is left when it ends.
  if [[ -d $run/root ]]; then
    findmnt -rn -o TARGET | grep -F "$run/" | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rm -rf "$run"
mkdir -p "$run"/{upper,work,root,cargo-upper,cargo-work}
root=$run/root
mount -t overlay overlay -o "lowerdir=$base,upperdir=$run/upper,workdir=$run/work" "$root"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The host's TLS trust, which its toolchain uses to reach crates.io (a
# machine set up with rustup has ca-certificates; this one may also trust
# a local CA). Not in /etc/ssl/certs, so no package the build installs
# can replace it.
host_ca=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
cp -L "$host_ca" "$root/etc/ssl-host-ca.crt"

# The host's Rust toolchain, read-only, at the same paths as on the host.
cargo_bin=$(dirname "$(command -v cargo)")
rustup_home=$(rustup show home 2>/dev/null || echo "${RUSTUP_HOME:-$HOME/.rustup}")
chroot_cargo_home=/root/.cargo
mkdir -p "$root$chroot_cargo_home/bin" "$root$rustup_home"
mount --bind -o ro "$cargo_bin" "$root$chroot_cargo_home/bin"
mount --bind -o ro "$rustup_home" "$root$rustup_home"
mount -o remount,bind,ro "$root$chroot_cargo_home/bin"
mount -o remount,bind,ro "$root$rustup_home"
# crates.io is reachable from the tree; the host's registry cache, under a
# writable overlay that is thrown away, only saves the downloads.
host_registry=${CARGO_HOME:-$HOME/.cargo}/registry
mkdir -p "$root$chroot_cargo_home/registry"
if [[ -d $host_registry ]]; then
  mount -t overlay overlay \
    -o "lowerdir=$host_registry,upperdir=$run/cargo-upper,workdir=$run/cargo-work" \
    "$root$chroot_cargo_home/registry"
fi

# The source: a clean archive of the working tree's tracked files (HEAD
# plus uncommitted changes; in CI that is HEAD).
snapshot=$(git stash create 2>/dev/null || true)
commit=$(git rev-parse HEAD)
mkdir -p "$root/src/berth"
git archive "${snapshot:-HEAD}" | tar -x -C "$root/src/berth"

# The README's first command: the fenced block under "## Set up", first line.
readme_cmd=$(awk '/^## Set up/{s=1} s&&/^```sh/{getline; print; exit}' README.md)
run_part=' && ./target/release/berthd'
if [[ $readme_cmd != *"$run_part" ]]; then
  echo "fresh-debian: the README's first command does not end with '$run_part': $readme_cmd" >&2
  exit 1
fi
build_cmd=${readme_cmd%"$run_part"}
echo "== fresh-debian: in the fresh tree: $build_cmd"

# A login-like clean environment: the toolchain on PATH, nothing of the host's.
in_tree=(chroot "$root" /usr/bin/env -i
  HOME=/root USER=root TERM=dumb LANG=C.UTF-8
  PATH="$chroot_cargo_home/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  CARGO_HOME="$chroot_cargo_home" RUSTUP_HOME="$rustup_home"
  SSL_CERT_FILE=/etc/ssl-host-ca.crt CARGO_HTTP_CAINFO=/etc/ssl-host-ca.crt
  DEBIAN_FRONTEND=noninteractive BERTH_GIT_COMMIT="$commit"
  CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
  /bin/bash -c)

t0=$(date +%s)
"${in_tree[@]}" "cd /src/berth && $build_cmd" </dev/null >"$cache/build.log" 2>&1 || {
  echo "fresh-debian: the README's build command failed in a fresh Debian $suite:" >&2
  tail -n 60 "$cache/build.log" >&2
  exit 1
}
echo "== fresh-debian: README build took $(($(date +%s) - t0)) s"

# Start it as the README does (no flags: embedded defaults, /run/berth/berth.sock).
"${in_tree[@]}" "cd /src/berth && exec ./target/release/berthd" </dev/null >"$cache/berthd.log" 2>&1 &
berthd_pid=$!
socket=$root/run/berth/berth.sock
for _ in $(seq 1 300); do
  [[ -S $socket ]] && break
  kill -0 "$berthd_pid" 2>/dev/null || break
  sleep 0.1
done
if [[ ! -S $socket ]]; then
  echo "fresh-debian: berthd did not serve on $socket:" >&2
  cat "$cache/berthd.log" >&2
  exit 1
fi
BERTH_EXTERNAL_SOCKET=$socket BERTH_EXPECT_COMMIT=$commit \
  cargo test -q --test daemon_grpc external_berthd_answers_version -- --ignored --exact
kill -TERM "$berthd_pid"
wait "$berthd_pid" || {
  echo "fresh-debian: berthd did not stop cleanly on SIGTERM:" >&2
  cat "$cache/berthd.log" >&2
  exit 1
}
berthd_pid=
[[ ! -e $socket ]] || {
  echo "fresh-debian: berthd left its socket behind" >&2
  exit 1
}
echo "== fresh-debian: stage took $(($(date +%s) - started)) s"
