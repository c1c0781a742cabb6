//! containerd-shim-berth-v2: a containerd shim v2 that runs containers with
//! berth's in-process runtime. One shim serves all containers of a pod.

mod attach;
mod bootstrap;
mod cri_log;
mod error;
mod events;
mod helper_run;
mod info;
mod metrics;
mod process;
mod reaper;
mod rootfs;
mod service;
mod shim;
mod start_params;
mod stdio;
mod sync;

fn main() {
    // Must come first: this binary is also the runtime's init helper.
    berth::runtime::run_helper_if_requested();
    std::process::exit(bootstrap::main());
}
