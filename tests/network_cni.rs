//! The pod network in CNI mode, with Debian's containernetworking-plugins
//! (bridge + host-local + portmap + loopback from /usr/lib/cni), configured
//! by the test in its own conf dir with its own bridge and subnets. Root.

#[path = "common/network.rs"]
mod network;

use network::{Fixture, Leftovers, Mode};

#[test]
fn cni_two_pods_connectivity_hostports_ipv6() {
    network::connectivity(Mode::Cni, 0).unwrap();
}

#[test]
fn cni_200_cycles_leave_nothing() {
    network::cycles(Mode::Cni, 1, 200).unwrap();
}

#[test]
fn cni_results_survive_crash() {
    network::survives_crash(Mode::Cni, 2).unwrap();
}

#[test]
fn cni_missing_plugin_is_not_ready_and_a_clear_error() {
    let fx = Fixture::with_plugins(Mode::Cni, 3, Some("berth-no-such-plugin")).unwrap();
    let st = fx.rt.block_on(fx.pn().status());
    assert!(!st.ready);
    assert_eq!(st.reason, "NetworkPluginNotReady");
    assert!(st.message.contains("berth-no-such-plugin"), "{st:?}");
    let a = fx.new_pod(1, vec![]).unwrap();
    let err = fx.setup(&a).unwrap_err();
    assert!(err.to_string().contains("berth-no-such-plugin"), "{err:#}");
    fx.remove_pod(&a).unwrap();
    assert_eq!(fx.leftovers().unwrap(), Leftovers::default());
}

#[test]
fn cni_status_ready_and_check() {
    let fx = Fixture::new(Mode::Cni, 4).unwrap();
    let st = fx.rt.block_on(fx.pn().status());
    assert!(st.ready, "{st:?}");
    let a = fx.new_pod(1, vec![]).unwrap();
    fx.setup(&a).unwrap();
    fx.rt.block_on(fx.pn().check(&a.pod_id)).unwrap();
    fx.remove_pod(&a).unwrap();
    assert_eq!(fx.leftovers().unwrap(), Leftovers::default());
}
