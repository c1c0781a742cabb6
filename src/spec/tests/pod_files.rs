//! resolv.conf, /etc/hosts and /etc/hostname contents.

use std::net::IpAddr;

use k8s_cri::v1::DnsConfig;

use crate::spec::{pod_hostname_file, pod_hosts_file, pod_resolv_conf, validate_hostname};

fn dns(servers: &[&str], searches: &[&str], options: &[&str]) -> DnsConfig {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    DnsConfig {
        servers: v(servers),
        searches: v(searches),
        options: v(options),
    }
}

const HOST: &str = "nameserver 192.0.2.53\n";

#[test]
fn resolv_conf() {
    type Row = (
        &'static str,
        Option<DnsConfig>,
        Result<&'static str, &'static str>,
    );
    let table: Vec<Row> = vec![
        ("no DNS config: the host's", None, Ok(HOST)),
        (
            "empty DNS config: the host's",
            Some(dns(&[], &[], &[])),
            Ok(HOST),
        ),
        (
            "full config",
            Some(dns(
                &["10.96.0.10", "fd00::10"],
                &["default.svc.cluster.local", "svc.cluster.local"],
                &["ndots:5", "edns0"],
            )),
            Ok(
                "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::10\noptions ndots:5 edns0\n",
            ),
        ),
        (
            "servers only",
            Some(dns(&["10.0.0.1"], &[], &[])),
            Ok("nameserver 10.0.0.1\n"),
        ),
        (
            "searches only",
            Some(dns(&[], &["example.test"], &[])),
            Ok("search example.test\n"),
        ),
        (
            "bad server",
            Some(dns(&["dns.example"], &[], &[])),
            Err("is not an IP address"),
        ),
        (
            "search with space",
            Some(dns(&[], &["a b"], &[])),
            Err("holds whitespace"),
        ),
        ("empty option", Some(dns(&[], &[], &[""])), Err("is empty")),
    ];
    for (name, cfg, want) in table {
        match (want, pod_resolv_conf(cfg.as_ref(), HOST)) {
            (Ok(w), Ok(g)) => assert_eq!(g, w, "{name}"),
            (Err(w), Err(e)) => assert!(e.to_string().contains(w), "{name}: {e}"),
            (w, g) => panic!("{name}: want {w:?}, got {g:?}"),
        }
    }
}

#[test]
fn hosts_and_hostname() {
    let ips: Vec<IpAddr> = vec!["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
    let hosts = pod_hosts_file("web-0", &ips).unwrap();
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"));
    assert!(hosts.ends_with("10.88.0.5\tweb-0\nfd00::5\tweb-0\n"));
    assert_eq!(pod_hosts_file("web-0", &[]).unwrap().lines().count(), 6);
    assert_eq!(pod_hostname_file("web-0").unwrap(), "web-0\n");

    for ok in ["a", "web-0", "node1.example.test", &"x".repeat(64)] {
        assert!(validate_hostname(ok).is_ok(), "{ok}");
    }
    for bad in ["", "-a", "a-", ".a", "a b", "a_b", "ä", &"x".repeat(65)] {
        assert!(validate_hostname(bad).is_err(), "{bad:?}");
        assert!(pod_hosts_file(bad, &[]).is_err());
    }
}
