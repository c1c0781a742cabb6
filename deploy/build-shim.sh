#!/bin/sh
# Builds containerd-shim-berth-v2 as it is meant to be installed: release,
# statically linked (glibc and libseccomp inside), position-dependent.
# Prints the path of the binary.
#
# One shim runs per pod and containerd starts it (and the runtime's helper,
# and `delete`) as a new process each time: with no ld.so and no shared libc
# an exec is ~0.4 ms faster, and an idle shim maps only the libc code it
# uses instead of libc.so's ~1.5 MiB (Go's runc shim is static too).
#
# crt-static cannot be a workspace-wide setting: build scripts and
# proc-macros cannot be static. With an explicit --target, RUSTFLAGS reach
# only the target's crates, and the result lands in target/<triple>/, apart
# from what `cargo build` makes.
set -eu
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
LIBSECCOMP_LINK_TYPE=static \
LIBSECCOMP_LIB_PATH="$(pkg-config --variable=libdir libseccomp)" \
    cargo build --release -p containerd-shim-berth-v2 --target "$host" >&2
echo "$PWD/target/$host/release/containerd-shim-berth-v2"
