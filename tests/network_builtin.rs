//! The pod network in the built-in mode (bridge, veth, IPAM, nftables),
//! against the real kernel. Root.

#[path = "common/network.rs"]
mod network;

use network::{Fixture, Leftovers, Mode, tcp};

#[test]
fn builtin_two_pods_connectivity_hostports_ipv6() {
    network::connectivity(Mode::Builtin, 0).unwrap();
}

#[test]
fn builtin_200_cycles_leave_nothing() {
    network::cycles(Mode::Builtin, 1, 200).unwrap();
}

#[test]
fn builtin_ipam_survives_crash() {
    network::survives_crash(Mode::Builtin, 2).unwrap();
}

#[test]
fn builtin_failed_setup_leaves_nothing() {
    let fx = Fixture::new(Mode::Builtin, 3).unwrap();
    let hp = network::free_port();
    let a = fx.new_pod(1, vec![tcp(hp, 8080, None)]).unwrap();
    fx.setup(&a).unwrap();
    // Same host port: fails at the last step, after lease and veth were made.
    let b = fx.new_pod(2, vec![tcp(hp, 8080, None)]).unwrap();
    let err = fx.setup(&b).unwrap_err();
    assert!(err.to_string().contains("already mapped"), "{err:#}");
    assert!(fx.pn().pod_ips(&b.pod_id).unwrap().is_empty());
    assert!(
        fx.pn()
            .leases()
            .unwrap()
            .iter()
            .all(|(_, owner)| owner != &b.pod_id)
    );
    assert_eq!(fx.bridge_ports().unwrap().len(), 1, "only pod A's veth");
    // Bad input: clear errors, nothing made.
    let mut bad = b.clone();
    bad.pod_id = "../escape".into();
    assert!(fx.setup(&bad).unwrap_err().to_string().contains("pod id"));
    let mut bad = b.clone();
    bad.netns_path = fx.dir.path().join("no-such-netns");
    assert!(
        fx.setup(&bad)
            .unwrap_err()
            .to_string()
            .contains("network namespace")
    );
    fx.remove_pod(&b).unwrap();
    fx.remove_pod(&a).unwrap();
    assert_eq!(fx.leftovers().unwrap(), Leftovers::default());
}

#[test]
fn builtin_status_and_pod_cidr_update() {
    let fx = Fixture::new(Mode::Builtin, 4).unwrap();
    let st = fx.rt.block_on(fx.pn().status());
    assert!(st.ready, "{st:?}");
    let pid = std::process::id();
    let new4 = format!("10.{}.{}.0/24", 210, pid % 250);
    fx.rt.block_on(fx.pn().set_pod_cidr(&new4)).unwrap();
    assert!(fx.rt.block_on(fx.pn().set_pod_cidr("not-a-cidr")).is_err());
    let a = fx.new_pod(1, vec![]).unwrap();
    let s = fx.setup(&a).unwrap();
    let prefix = new4.rsplit_once('.').unwrap().0.to_string() + ".";
    assert!(
        s.ips[0].to_string().starts_with(&prefix),
        "{:?} not from {new4}",
        s.ips
    );
    fx.serve(&a, "cidr").unwrap();
    let got = network::http_get(
        std::net::SocketAddr::new(s.ips[0], 8080),
        std::time::Duration::from_secs(15),
    )
    .unwrap();
    assert_eq!(got, "cidr");
    fx.remove_pod(&a).unwrap();
    assert_eq!(fx.leftovers().unwrap(), Leftovers::default());
}
