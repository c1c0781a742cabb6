#!/usr/bin/env bash
# Runs berth's whole test suite on a fresh Debian 12 machine, as root.
# Installs what the tests need (Debian packages, by name), checks format,
# lints and docs, builds every binary, runs unit and integration tests,
# fuzzes the parsers of untrusted bytes (tests/fuzz.sh), then builds berth
# from the README's set-up command in a fresh Debian 12 tree
# (tests/fresh-debian.sh) and runs the VM lane. .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  containerd runc                 # containerd as a shim client, runc for side-by-side benches
  busybox-static                  # the test images are built from it
  docker-registry apache2-utils   # a local registry (htpasswd for auth tests)
  containernetworking-plugins     # CNI plugins for the network tests
  iproute2 iptables nftables      # inspection in network tests
  libseccomp-dev pkg-config       # build: the libseccomp crate links libseccomp (.a for the static shim)
  protobuf-compiler               # build: k8s-cri's build script runs protoc
  debootstrap                     # fresh-debian.sh: a fresh Debian 12 tree for the README's command
  gcc libc6-dev                   # cri_security builds a static setuid probe
  g++                             # tests/fuzz.sh: libfuzzer-sys builds libFuzzer from C++
  openssl                         # cri_stream_tls makes a self-signed certificate
  umoci skopeo                    # cri_image_umoci: an image a real builder made, pushed by skopeo
  python3-venv python3-pip        # cri_grpcio: Python grpcio (PyPI) as a third-party CRI client
  criu                            # cri_checkpoint: CheckpointContainer dumps with CRIU
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "the test suite creates namespaces, mounts and cgroups: run it as root" >&2
  exit 1
fi

echo "== containerd 2.x for the shim tests (Debian unstable, pinned low, extracted)"
containerd2_bin=$(tests/setup-containerd2.sh)
export BERTH_CONTAINERD2_BIN_DIR="$containerd2_bin"

echo "== CRIU for cri_checkpoint (Debian 12's, or unstable's extracted where 12's fails criu check)"
if criu_cmd=$(tests/setup-criu.sh); then
  export BERTH_CRIU="$criu_cmd"
else
  echo "no working CRIU: cri_checkpoint will print skipped"
fi

echo "== format, lints, docs"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps

echo "== Python grpcio (PyPI) for cri_grpcio, in a venv under target/"
tests/grpcio-venv.sh || echo "grpcio could not be installed: cri_grpcio will print skipped"

echo "== build"
cargo build --workspace --all-targets

echo "== tests"
# Integration tests each start their own containerd/registry/berthd in temp
# dirs; two test threads keep a 2-core machine responsive.
cargo test --workspace -- --test-threads="${BERTH_TEST_THREADS:-2}"

echo "== the shim as installed (static release build) under containerd"
BERTH_SHIM_BIN=$(deploy/build-shim.sh) \
  cargo test --test shim_containerd -- --test-threads="${BERTH_TEST_THREADS:-2}"

echo "== the shim under containerd 2.x ($containerd2_bin)"
BERTH_CONTAINERD_BIN_DIR="$containerd2_bin" \
  cargo test --test shim_containerd -- --test-threads="${BERTH_TEST_THREADS:-2}"

echo "== fuzz the parsers of untrusted bytes (cargo-fuzz, each target for a bounded time)"
./tests/fuzz.sh

echo "== the README's set-up command in a fresh Debian 12 (debootstrap)"
./tests/fresh-debian.sh

echo "== the VM lane: Debian 12, systemd as pid 1, pure cgroup v2 (tests/vm/)"
# A real node's setup under qemu (software emulation, 20-50x slower than the
# host): the tests in tests/vm/lane.txt, time-boxed.
tests/vm/setup.sh
lane_start=$(date +%s)
lane_rc=0
mapfile -t lane_tests < <(grep -v '^#' tests/vm/lane.txt | grep .)
tests/vm/run.sh -t "${BERTH_VM_TIMEOUT:-2400}" "${lane_tests[@]}" || lane_rc=$?
echo "== the VM lane took $(($(date +%s) - lane_start)) s (exit $lane_rc)"
case $lane_rc in
  0) ;;
  77) ;; # run.sh said "skipped: <why>" (qemu cannot run here)
  *) exit "$lane_rc" ;;
esac
