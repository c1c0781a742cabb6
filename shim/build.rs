//! Links the shim as a position-dependent executable, as Debian links
//! containerd-shim-runc-v2 and runc: with no load-time relocations a shim
//! neither reads a ~400 KiB relocation table at every start nor dirties
//! (and so privately owns) its ~300 KiB of relocated read-only data. One
//! shim runs per pod, so this is resident memory per pod.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
