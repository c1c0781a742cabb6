//! [`PodNetwork`]: one pod's network, set up and torn down in either mode.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Map, Value, json};
use tracing::{debug, info, warn};

use super::addr::{Ipv4Net, Ipv6Net};
use super::cni::{self, CniConfList, CniRuntime};
use super::config::{NetworkConfig, NetworkMode};
use super::error::NetworkError;
use super::ipam::{self, Ipam, Pool};
use super::links;
use super::netns;
use super::nft::NftTable;
use super::state::{CniPodState, PodMode, PodState, StateDir, check_pod_id};
use super::types::{
    InterfaceStats, NetworkReadiness, PodInterfaces, PodNetworkRequest, PodNetworkStatus,
};

const POD_IFNAME: &str = "eth0";

/// The built-in mode's subnets: the current ones lease new addresses; every
/// one ever used in this process keeps its masquerade rule and gateway.
#[derive(Debug)]
struct Subnets {
    v4: Ipv4Net,
    v6: Option<Ipv6Net>,
    all_v4: Vec<Ipv4Net>,
    all_v6: Vec<Ipv6Net>,
}

/// Sets up and tears down pod networks. Shared by all pods of a berthd.
#[derive(Debug)]
pub struct PodNetwork {
    config: NetworkConfig,
    /// Pod state files and IPAM leases, one directory (one fsync per operation).
    pods: StateDir,
    nft: NftTable,
    subnets: Mutex<Subnets>,
    /// Whether the bridge, sysctls and nftables table are known to be in place.
    host_ready: tokio::sync::Mutex<bool>,
}

impl PodNetwork {
    /// Checks the config and opens the state under `state_dir`
    /// (`lease-<address>` symlinks, `pod-<pod id>.json`). Touches no
    /// network device: the bridge and rules are made on the first setup.
    pub fn new(config: NetworkConfig, state_dir: &Path) -> Result<Self, NetworkError> {
        let (v4, v6) = config.validate()?;
        let pods = StateDir::open(state_dir.to_path_buf())?;
        Ok(Self {
            nft: NftTable::new(&config.bridge_name),
            config,
            pods,
            subnets: Mutex::new(Subnets {
                v4,
                v6,
                all_v4: vec![v4],
                all_v6: v6.into_iter().collect(),
            }),
            host_ready: tokio::sync::Mutex::new(false),
        })
    }

    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The nftables table of the built-in mode.
    pub fn nft_table(&self) -> &NftTable {
        &self.nft
    }

    /// The CNI config list in use, if this is CNI mode (`cni` or `auto`).
    fn cni_list(&self) -> Result<Option<CniConfList>, NetworkError> {
        match self.config.mode {
            NetworkMode::Builtin => Ok(None),
            // Read at every call, as containerd watches the directory: a
            // config list the CNI daemonset writes later is used at once.
            NetworkMode::Cni | NetworkMode::Auto => {
                match cni::load_conf_list(&self.config.cni_conf_dir)? {
                    Some(l) => Ok(Some(l)),
                    None => Err(NetworkError::NotReady(format!(
                        "cni plugin not initialized: no network config found in {}",
                        self.config.cni_conf_dir.display()
                    ))),
                }
            }
        }
    }

    /// UpdateRuntimeConfig's pod CIDR (comma separated for dual stack):
    /// new built-in leases come from it; pods already running keep theirs.
    pub async fn set_pod_cidr(&self, cidr: &str) -> Result<(), NetworkError> {
        let mut v4 = None;
        let mut v6 = None;
        for part in cidr.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.contains(':') {
                v6 = Some(part.parse::<Ipv6Net>()?);
            } else {
                let n = part.parse::<Ipv4Net>()?;
                if n.prefix > 30 {
                    return Err(NetworkError::Config(format!("pod CIDR {n} is too small")));
                }
                v4 = Some(n);
            }
        }
        if v4.is_none() && v6.is_none() {
            return Ok(());
        }
        {
            let mut s = self.subnets.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = v4 {
                s.v4 = n;
                if !s.all_v4.contains(&n) {
                    s.all_v4.push(n);
                }
            }
            if let Some(n) = v6 {
                s.v6 = Some(n);
                if !s.all_v6.contains(&n) {
                    s.all_v6.push(n);
                }
            }
        }
        info!(cidr, "pod CIDR updated");
        *self.host_ready.lock().await = false;
        Ok(())
    }

    /// The NetworkReady condition.
    pub async fn status(&self) -> NetworkReadiness {
        let not_ready = |msg: String| NetworkReadiness {
            ready: false,
            reason: "NetworkPluginNotReady".into(),
            message: msg,
        };
        match self.cni_list() {
            Err(e) => not_ready(e.to_string()),
            Ok(Some(list)) => {
                let mut res = cni::status(&list, &self.config.cni_bin_dirs).await;
                if res.is_ok() && cni::find_plugin("loopback", &self.config.cni_bin_dirs).is_err() {
                    res = Err(NetworkError::CniPluginNotFound {
                        plugin: "loopback".into(),
                        dirs: format!("{:?}", self.config.cni_bin_dirs),
                    });
                }
                match res {
                    Ok(()) => NetworkReadiness {
                        ready: true,
                        reason: String::new(),
                        message: String::new(),
                    },
                    Err(e) => not_ready(format!(
                        "CNI network {:?} ({}): {e}",
                        list.name,
                        list.source.display()
                    )),
                }
            }
            Ok(None) => match which_nft() {
                true => NetworkReadiness {
                    ready: true,
                    reason: String::new(),
                    message: String::new(),
                },
                false => not_ready("built-in network: the nft binary is not on PATH".into()),
            },
        }
    }

    /// Sets up the pod's network. On failure nothing is left behind.
    pub async fn setup(&self, req: &PodNetworkRequest) -> Result<PodNetworkStatus, NetworkError> {
        check_pod_id(&req.pod_id)?;
        if !netns::is_netns(&req.netns_path) {
            return Err(NetworkError::Netns {
                path: req.netns_path.clone(),
                msg: "not a pinned network namespace".into(),
            });
        }
        for p in &req.port_mappings {
            if p.host_port == 0 || p.container_port == 0 {
                return Err(NetworkError::InvalidRequest(format!(
                    "port mapping {p:?}: ports must be non-zero"
                )));
            }
        }
        let start = Instant::now();
        let list = self.cni_list()?;
        let res = match &list {
            Some(l) => self.setup_cni(req, l).await,
            None => self.setup_builtin(req).await,
        };
        match res {
            Ok(st) => {
                info!(pod = %req.pod_id, ips = ?st.ips, mode = if list.is_some() { "cni" } else { "builtin" },
                      elapsed_us = start.elapsed().as_micros() as u64, "pod network set up");
                Ok(st)
            }
            Err(e) => {
                warn!(pod = %req.pod_id, error = %e, "pod network setup failed, undoing");
                if let Err(e2) = self.teardown(&req.pod_id, &req.netns_path).await {
                    warn!(pod = %req.pod_id, error = %e2, "undoing a failed setup failed");
                }
                Err(e)
            }
        }
    }

    async fn ensure_host(&self) -> Result<(), NetworkError> {
        let mut ready = self.host_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let (v4, v6, all_v4, all_v6) = {
            let s = self.subnets.lock().unwrap_or_else(|p| p.into_inner());
            (s.v4, s.v6, s.all_v4.clone(), s.all_v6.clone())
        };
        let mut gws: Vec<(IpAddr, u8)> = all_v4
            .iter()
            .map(|n| (IpAddr::V4(n.gateway()), n.prefix))
            .collect();
        gws.extend(all_v6.iter().map(|n| (IpAddr::V6(n.gateway()), n.prefix)));
        let br = &self.config.bridge_name;
        let h = netns::netlink_host()?;
        links::ensure_bridge(&h, br, &gws).await?;
        links::sysctl(&["net", "ipv4", "ip_forward"], "1")?;
        // 127.0.0.1:hostPort is DNAT'ed out of this bridge.
        links::sysctl(&["net", "ipv4", "conf", br, "route_localnet"], "1")?;
        if v6.is_some() {
            links::sysctl(&["net", "ipv6", "conf", "all", "forwarding"], "1")?;
        }
        self.nft.ensure(&all_v4, &all_v6).await?;
        debug!(bridge = %br, v4 = %v4, "built-in network host side ready");
        *ready = true;
        Ok(())
    }

    async fn setup_builtin(
        &self,
        req: &PodNetworkRequest,
    ) -> Result<PodNetworkStatus, NetworkError> {
        let t0 = Instant::now();
        self.ensure_host().await?;
        let (v4, v6) = {
            let s = self.subnets.lock().unwrap_or_else(|p| p.into_inner());
            (s.v4, s.v6)
        };
        let t_host = t0.elapsed();
        // Leases first: each names its pod, so a crash from here on is undone
        // by teardown even without the state file. One fsync makes both durable.
        let dir = self.pods.dir();
        let mut addrs = vec![(
            Ipam::open(dir, Pool::V4(v4)).allocate(&req.pod_id)?,
            v4.prefix,
        )];
        if let Some(n) = v6 {
            addrs.push((
                Ipam::open(dir, Pool::V6(n)).allocate(&req.pod_id)?,
                n.prefix,
            ));
        }
        let st = PodState {
            pod_id: req.pod_id.clone(),
            mode: PodMode::Builtin,
            netns_path: req.netns_path.clone(),
            interface: POD_IFNAME.into(),
            ips: addrs.iter().map(|a| a.0).collect(),
            port_mappings: req.port_mappings.clone(),
            cni: None,
        };
        self.pods.save(&st)?;
        self.pods.sync()?;
        let t_ipam = t0.elapsed();

        let h = netns::netlink_host()?;
        let bridge = links::link_index(&h, &self.config.bridge_name)
            .await?
            .ok_or_else(|| {
                NetworkError::Config(format!("bridge {} is gone", self.config.bridge_name))
            })?;
        let host_veth = links::host_veth_name(&req.pod_id);
        // A retried setup replaces what an interrupted one left.
        links::delete_link(&h, &host_veth).await?;
        let ns = netns::open_netns(&req.netns_path)?;
        links::add_veth(&h, bridge, &host_veth, &ns).await?;
        let t_veth = t0.elapsed();

        let pod_h = netns::netlink_in(&req.netns_path)?;
        links::configure_pod(&pod_h, &addrs, Some(v4.gateway()), v6.map(|n| n.gateway())).await?;
        drop(pod_h);
        let t_pod = t0.elapsed();

        self.nft.add_ports(&req.port_mappings, &st.ips).await?;
        if let Some(b) = &req.bandwidth {
            warn!(pod = %req.pod_id, ?b, "bandwidth limits are not applied in the built-in mode");
        }
        debug!(pod = %req.pod_id, host_us = t_host.as_micros() as u64, ipam_us = (t_ipam - t_host).as_micros() as u64,
               veth_us = (t_veth - t_ipam).as_micros() as u64, pod_us = (t_pod - t_veth).as_micros() as u64,
               ports_us = (t0.elapsed() - t_pod).as_micros() as u64, "built-in setup phases");
        Ok(PodNetworkStatus {
            ips: st.ips,
            interface: POD_IFNAME.into(),
        })
    }

    fn cni_runtime(
        &self,
        req_pod: &str,
        netns_path: &Path,
        args: Vec<(String, String)>,
        caps: Map<String, Value>,
    ) -> CniRuntime {
        CniRuntime {
            container_id: req_pod.to_string(),
            netns: if netns::is_netns(netns_path) {
                netns_path.display().to_string()
            } else {
                String::new()
            },
            ifname: POD_IFNAME.into(),
            args,
            capability_args: caps,
            bin_dirs: self.config.cni_bin_dirs.clone(),
        }
    }

    async fn setup_cni(
        &self,
        req: &PodNetworkRequest,
        list: &CniConfList,
    ) -> Result<PodNetworkStatus, NetworkError> {
        let args = vec![
            ("K8S_POD_NAMESPACE".to_string(), req.namespace.clone()),
            ("K8S_POD_NAME".to_string(), req.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".to_string(), req.pod_id.clone()),
            ("K8S_POD_UID".to_string(), req.uid.clone()),
        ];
        let mut caps = Map::new();
        let ports: Vec<Value> = req
            .port_mappings
            .iter()
            .map(|p| {
                let mut m = json!({"hostPort": p.host_port, "containerPort": p.container_port,
                                   "protocol": p.protocol.as_str()});
                if let Some(ip) = p.host_ip.filter(|i| !i.is_unspecified()) {
                    m["hostIP"] = json!(ip.to_string());
                }
                m
            })
            .collect();
        if !ports.is_empty() {
            caps.insert("portMappings".into(), Value::Array(ports));
        }
        if let Some(d) = &req.dns {
            caps.insert(
                "dns".into(),
                json!({"servers": d.servers, "searches": d.searches, "options": d.options}),
            );
        }
        if let Some(b) = &req.bandwidth {
            caps.insert(
                "bandwidth".into(),
                json!({"ingressRate": b.ingress_rate, "ingressBurst": b.ingress_burst,
                       "egressRate": b.egress_rate, "egressBurst": b.egress_burst}),
            );
        }
        // Every plugin must exist before anything runs: a clear error, nothing half-made.
        for t in list.plugin_types() {
            cni::find_plugin(&t, &self.config.cni_bin_dirs)?;
        }
        let mut st = PodState {
            pod_id: req.pod_id.clone(),
            mode: PodMode::Cni,
            netns_path: req.netns_path.clone(),
            interface: POD_IFNAME.into(),
            ips: vec![],
            port_mappings: req.port_mappings.clone(),
            cni: Some(CniPodState {
                conf_list: list.to_value(),
                args: args.clone(),
                capability_args: caps.clone(),
                result: None,
            }),
        };
        self.pods.save(&st)?;
        self.pods.sync()?;
        let rt = self.cni_runtime(&req.pod_id, &req.netns_path, args, caps);
        self.cni_loopback(list, &rt).await?;
        let result = cni::add(list, &rt).await?;
        st.ips = cni::result_ips(&result);
        if let Some(c) = st.cni.as_mut() {
            c.result = Some(result);
        }
        self.pods.save(&st)?;
        self.pods.sync()?;
        Ok(PodNetworkStatus {
            ips: st.ips,
            interface: POD_IFNAME.into(),
        })
    }

    /// `lo` up: the loopback plugin when installed (as containerd does), else netlink.
    async fn cni_loopback(&self, list: &CniConfList, rt: &CniRuntime) -> Result<(), NetworkError> {
        let lo_rt = CniRuntime {
            ifname: "lo".into(),
            capability_args: Map::new(),
            ..rt.clone()
        };
        if cni::find_plugin("loopback", &self.config.cni_bin_dirs).is_ok() {
            cni::add(&cni::loopback_list(&list.cni_version), &lo_rt)
                .await
                .map(|_| ())
        } else {
            let h = netns::netlink_in(Path::new(&rt.netns))?;
            links::configure_pod_lo(&h).await
        }
    }

    /// CNI CHECK of a pod set up in CNI mode (a no-op for the built-in mode,
    /// and before CNI 0.4.0).
    pub async fn check(&self, pod_id: &str) -> Result<(), NetworkError> {
        check_pod_id(pod_id)?;
        let Some(st) = self.pods.load(pod_id)? else {
            return Err(NetworkError::InvalidRequest(format!(
                "pod {pod_id} has no network"
            )));
        };
        let Some(c) = st.cni.as_ref() else {
            return Ok(());
        };
        let list = CniConfList::from_value(&c.conf_list)?;
        let rt = self.cni_runtime(
            pod_id,
            &st.netns_path,
            c.args.clone(),
            c.capability_args.clone(),
        );
        match &c.result {
            Some(r) => cni::check(&list, &rt, r).await,
            None => Err(NetworkError::InvalidRequest(format!(
                "pod {pod_id}: CNI ADD never completed"
            ))),
        }
    }

    /// Tears down the pod's network: idempotent, and complete after a crash
    /// at any point of setup or when the namespace file is already gone.
    /// On error (a CNI DEL that failed) the state is kept: call again.
    pub async fn teardown(&self, pod_id: &str, netns_path: &Path) -> Result<(), NetworkError> {
        check_pod_id(pod_id)?;
        let start = Instant::now();
        let st = self.pods.load(pod_id)?;
        if let Some(PodState {
            cni: Some(c),
            netns_path: ns,
            ..
        }) = &st
        {
            let list = CniConfList::from_value(&c.conf_list)?;
            let ns = if netns_path.as_os_str().is_empty() {
                ns.as_path()
            } else {
                netns_path
            };
            let rt = self.cni_runtime(pod_id, ns, c.args.clone(), c.capability_args.clone());
            // No DEL for the loopback network: lo goes away with the namespace.
            cni::del(&list, &rt, c.result.as_ref()).await?;
        }
        if st.as_ref().is_none_or(|s| s.mode == PodMode::Builtin) {
            self.teardown_builtin(pod_id, st.as_ref()).await?;
        }
        self.pods.remove(pod_id)?;
        self.pods.sync()?;
        debug!(pod = %pod_id, elapsed_us = start.elapsed().as_micros() as u64, "pod network torn down");
        Ok(())
    }

    async fn teardown_builtin(
        &self,
        pod_id: &str,
        st: Option<&PodState>,
    ) -> Result<(), NetworkError> {
        let leased: Vec<IpAddr> = ipam::leases(self.pods.dir())?
            .into_iter()
            .filter(|(_, owner)| owner == pod_id)
            .map(|(ip, _)| ip)
            .collect();
        let mut ips: Vec<IpAddr> = st.map(|s| s.ips.clone()).unwrap_or_default();
        for ip in leased {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        // Without state we cannot know whether ports were mapped: look.
        if st.is_none_or(|s| !s.port_mappings.is_empty()) {
            self.nft.remove_ports(&ips).await?;
        }
        let t_nft = Instant::now();
        let h = netns::netlink_host()?;
        links::delete_link(&h, &links::host_veth_name(pod_id)).await?;
        debug!(pod = %pod_id, veth_delete_us = t_nft.elapsed().as_micros() as u64, "built-in teardown: veth");
        ipam::release(self.pods.dir(), pod_id)?;
        Ok(())
    }

    /// The pod's interface counters, None when it has none (yet).
    pub async fn interface_stats(
        &self,
        pod_id: &str,
        netns_path: &Path,
    ) -> Result<Option<InterfaceStats>, NetworkError> {
        let Some((ifname, h)) = self.stats_handle(pod_id, netns_path)? else {
            return Ok(None);
        };
        links::link_stats(&h, &ifname).await
    }

    /// The counters of every interface in the pod's namespace but `lo`
    /// (CNI plugins may add more than the pod's own), None when the
    /// namespace is gone.
    pub async fn all_interface_stats(
        &self,
        pod_id: &str,
        netns_path: &Path,
    ) -> Result<Option<PodInterfaces>, NetworkError> {
        let Some((default_name, h)) = self.stats_handle(pod_id, netns_path)? else {
            return Ok(None);
        };
        Ok(Some(PodInterfaces {
            default_name,
            interfaces: links::all_link_stats(&h).await?,
        }))
    }

    /// The pod's own interface name and a netlink handle in its namespace,
    /// None when the namespace is gone.
    fn stats_handle(
        &self,
        pod_id: &str,
        netns_path: &Path,
    ) -> Result<Option<(String, rtnetlink::Handle)>, NetworkError> {
        check_pod_id(pod_id)?;
        let ifname = self
            .pods
            .load(pod_id)?
            .map(|s| s.interface)
            .unwrap_or_else(|| POD_IFNAME.into());
        if !netns::is_netns(netns_path) {
            return Ok(None);
        }
        Ok(Some((ifname, netns::netlink_in(netns_path)?)))
    }

    /// The IPs a pod was given (from its state), for PodSandboxStatus.
    pub fn pod_ips(&self, pod_id: &str) -> Result<Vec<IpAddr>, NetworkError> {
        check_pod_id(pod_id)?;
        Ok(self.pods.load(pod_id)?.map(|s| s.ips).unwrap_or_default())
    }

    /// Ids of every pod with network state (to reconcile after a restart).
    pub fn pods_with_state(&self) -> Result<Vec<String>, NetworkError> {
        self.pods.pods()
    }

    /// Every lease of the built-in IPAM: (address, pod id).
    pub fn leases(&self) -> Result<Vec<(IpAddr, String)>, NetworkError> {
        ipam::leases(self.pods.dir())
    }

    /// Removes the built-in mode's host side (bridge and nftables table),
    /// e.g. on uninstall. Pods still set up lose their network.
    pub async fn remove_host_network(&self) -> Result<(), NetworkError> {
        let mut ready = self.host_ready.lock().await;
        let h = netns::netlink_host()?;
        links::delete_link(&h, &self.config.bridge_name).await?;
        self.nft.delete().await?;
        *ready = false;
        Ok(())
    }
}

fn which_nft() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()))
        .unwrap_or(false)
}
