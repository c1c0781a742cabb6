//! containerd-shim-berth-v2: a containerd shim v2 that runs containers with
//! berth's in-process runtime.

fn main() {
    println!("containerd-shim-berth-v2 {}", berth::VERSION);
}
