//! The CNI driver: loads the first network config list of the conf dir and
//! runs its plugins with the CNI protocol (ADD, DEL, CHECK, STATUS).
//! <https://github.com/containernetworking/cni/blob/main/SPEC.md>

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;

use super::error::NetworkError;

/// A loaded network configuration list.
#[derive(Clone, Debug, PartialEq)]
pub struct CniConfList {
    pub source: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl CniConfList {
    /// The list as cached in the pod state (a `.conflist` document).
    pub fn to_value(&self) -> Value {
        json!({ "name": self.name, "cniVersion": self.cni_version, "plugins": self.plugins,
                "source": self.source })
    }

    pub fn from_value(v: &Value) -> Result<Self, NetworkError> {
        let source = PathBuf::from(
            v.get("source")
                .and_then(Value::as_str)
                .unwrap_or("(cached)"),
        );
        parse_list(v, &source)
    }

    /// The plugin types, in order.
    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str).map(str::to_string))
            .collect()
    }
}

/// Whether version `v` is at least `min` (both "a.b.c").
pub fn version_at_least(v: &str, min: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(v) >= parse(min)
}

fn conf_err(dir: &Path, msg: impl Into<String>) -> NetworkError {
    NetworkError::CniConfig {
        dir: dir.to_path_buf(),
        msg: msg.into(),
    }
}

fn parse_list(v: &Value, source: &Path) -> Result<CniConfList, NetworkError> {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| conf_err(source, "no \"name\""))?
        .to_string();
    let cni_version = v
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.2.0")
        .to_string();
    let plugins = match v.get("plugins") {
        Some(Value::Array(p)) => p.clone(),
        Some(_) => return Err(conf_err(source, "\"plugins\" is not a list")),
        // A single-plugin `.conf` file.
        None => vec![v.clone()],
    };
    if plugins.is_empty() {
        return Err(conf_err(source, "no plugins"));
    }
    for p in &plugins {
        if p.get("type")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(conf_err(source, "a plugin has no \"type\""));
        }
    }
    Ok(CniConfList {
        source: source.to_path_buf(),
        name,
        cni_version,
        plugins,
    })
}

/// The first (by file name) `.conflist`, `.conf` or `.json` in `dir`;
/// None when there is none or the directory does not exist.
pub fn load_conf_list(dir: &Path) -> Result<Option<CniConfList>, NetworkError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NetworkError::io(format!("read {}", dir.display()), e)),
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            ) && p.is_file()
        })
        .collect();
    files.sort();
    let Some(first) = files.into_iter().next() else {
        return Ok(None);
    };
    let body = std::fs::read(&first)
        .map_err(|e| NetworkError::io(format!("read {}", first.display()), e))?;
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| conf_err(&first, format!("not JSON: {e}")))?;
    parse_list(&v, &first).map(Some)
}

/// The plugin binary `ty` in the first of `dirs` that has it.
pub fn find_plugin(ty: &str, dirs: &[PathBuf]) -> Result<PathBuf, NetworkError> {
    if ty.contains('/') || ty.is_empty() {
        return Err(NetworkError::CniPluginNotFound {
            plugin: ty.to_string(),
            dirs: "(invalid name)".into(),
        });
    }
    dirs.iter()
        .map(|d| d.join(ty))
        .find(|p| p.is_file())
        .ok_or_else(|| NetworkError::CniPluginNotFound {
            plugin: ty.to_string(),
            dirs: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// The runtime's side of one invocation.
#[derive(Clone, Debug)]
pub struct CniRuntime {
    pub container_id: String,
    /// Empty on DEL when the namespace is already gone.
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS pairs (`K8S_POD_NAME`, ...).
    pub args: Vec<(String, String)>,
    /// Values for the `capabilities` the plugins declare (`portMappings`, `dns`, `bandwidth`).
    pub capability_args: Map<String, Value>,
    pub bin_dirs: Vec<PathBuf>,
}

impl CniRuntime {
    fn cni_args(&self) -> String {
        let mut s = String::from("IgnoreUnknown=1");
        for (k, v) in &self.args {
            s += &format!(";{k}={v}");
        }
        s
    }
}

/// The stdin config of one plugin of the list.
pub fn plugin_config(
    list: &CniConfList,
    plugin: &Value,
    rt: &CniRuntime,
    prev: Option<&Value>,
) -> Value {
    let mut conf = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    let mut runtime_config = Map::new();
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        for (cap, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = rt.capability_args.get(cap)
            {
                runtime_config.insert(cap.clone(), v.clone());
            }
        }
    }
    if !runtime_config.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime_config));
    }
    Value::Object(conf)
}

/// Runs one plugin; returns its stdout as JSON (None when empty).
async fn exec(
    path: &Path,
    command: &str,
    rt: Option<&CniRuntime>,
    bin_dirs: &[PathBuf],
    conf: &Value,
) -> Result<Option<Value>, NetworkError> {
    let plugin = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut cmd = tokio::process::Command::new(path);
    cmd.env("CNI_COMMAND", command)
        .env(
            "CNI_PATH",
            std::env::join_paths(bin_dirs).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(rt) = rt {
        cmd.env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", rt.cni_args());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| NetworkError::io(format!("run CNI plugin {}", path.display()), e))?;
    let input =
        serde_json::to_vec(conf).map_err(|e| NetworkError::io("encode CNI config", e.into()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A plugin may exit without reading its input; a broken pipe is then not our error.
    let _ = stdin.write_all(&input).await;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetworkError::io(format!("run CNI plugin {plugin}"), e))?;
    let stdout: Option<Value> = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice(&out.stdout).ok()
    };
    if !out.status.success() {
        let (code, msg, details) = match &stdout {
            Some(v) => (
                v.get("code").and_then(Value::as_u64).unwrap_or(999) as u32,
                v.get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                v.get("details")
                    .and_then(Value::as_str)
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default(),
            ),
            None => (
                999,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
                String::new(),
            ),
        };
        return Err(NetworkError::CniPlugin {
            plugin,
            command: command.to_string(),
            code,
            msg,
            details,
        });
    }
    Ok(stdout)
}

/// ADD through the whole list, each plugin getting the previous result.
pub async fn add(list: &CniConfList, rt: &CniRuntime) -> Result<Value, NetworkError> {
    let paths = resolve(list, &rt.bin_dirs)?;
    let mut prev: Option<Value> = None;
    for (plugin, path) in list.plugins.iter().zip(&paths) {
        let conf = plugin_config(list, plugin, rt, prev.as_ref());
        if let Some(r) = exec(path, "ADD", Some(rt), &rt.bin_dirs, &conf).await? {
            prev = Some(r);
        }
    }
    prev.ok_or_else(|| NetworkError::CniConfig {
        dir: list.source.clone(),
        msg: "the plugins returned no result".into(),
    })
}

/// DEL through the list in reverse, with the cached ADD result as prevResult
/// (from 0.4.0 on).
pub async fn del(
    list: &CniConfList,
    rt: &CniRuntime,
    cached: Option<&Value>,
) -> Result<(), NetworkError> {
    let paths = resolve(list, &rt.bin_dirs)?;
    let prev = cached.filter(|_| version_at_least(&list.cni_version, "0.4.0"));
    for (plugin, path) in list.plugins.iter().zip(&paths).rev() {
        let conf = plugin_config(list, plugin, rt, prev);
        exec(path, "DEL", Some(rt), &rt.bin_dirs, &conf).await?;
    }
    Ok(())
}

/// CHECK through the list (0.4.0 on), with the cached ADD result.
pub async fn check(
    list: &CniConfList,
    rt: &CniRuntime,
    cached: &Value,
) -> Result<(), NetworkError> {
    if !version_at_least(&list.cni_version, "0.4.0") {
        return Ok(());
    }
    let paths = resolve(list, &rt.bin_dirs)?;
    for (plugin, path) in list.plugins.iter().zip(&paths) {
        let conf = plugin_config(list, plugin, rt, Some(cached));
        exec(path, "CHECK", Some(rt), &rt.bin_dirs, &conf).await?;
    }
    Ok(())
}

/// STATUS of every plugin (1.1.0 on): Ok when all are ready. Before 1.1.0,
/// ready means every plugin binary exists.
pub async fn status(list: &CniConfList, bin_dirs: &[PathBuf]) -> Result<(), NetworkError> {
    let paths = resolve(list, bin_dirs)?;
    if !version_at_least(&list.cni_version, "1.1.0") {
        return Ok(());
    }
    let rt = CniRuntime {
        container_id: String::new(),
        netns: String::new(),
        ifname: String::new(),
        args: vec![],
        capability_args: Map::new(),
        bin_dirs: bin_dirs.to_vec(),
    };
    for (plugin, path) in list.plugins.iter().zip(&paths) {
        let conf = plugin_config(list, plugin, &rt, None);
        exec(path, "STATUS", None, bin_dirs, &conf).await?;
    }
    Ok(())
}

fn resolve(list: &CniConfList, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, NetworkError> {
    list.plugin_types()
        .iter()
        .map(|t| find_plugin(t, dirs))
        .collect()
}

/// The pod's addresses in a result (0.3.0+ `ips`, or 0.1/0.2 `ip4`/`ip6`):
/// only those on an interface inside the sandbox, IPv4 first.
pub fn result_ips(result: &Value) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let parse = |s: &str| s.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
    if let Some(list) = result.get("ips").and_then(Value::as_array) {
        let ifaces = result.get("interfaces").and_then(Value::as_array);
        for ip in list {
            let in_sandbox = match (ip.get("interface").and_then(Value::as_u64), ifaces) {
                (Some(i), Some(ifs)) => ifs
                    .get(i as usize)
                    .and_then(|f| f.get("sandbox"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty()),
                _ => true,
            };
            if in_sandbox && let Some(a) = ip.get("address").and_then(Value::as_str).and_then(parse)
            {
                ips.push(a);
            }
        }
    } else {
        for k in ["ip4", "ip6"] {
            if let Some(a) = result
                .get(k)
                .and_then(|v| v.get("ip"))
                .and_then(Value::as_str)
                .and_then(parse)
            {
                ips.push(a);
            }
        }
    }
    ips.sort_by_key(|i| i.is_ipv6());
    ips
}

/// The loopback network containerd and CRI-O run for every pod (`lo` up).
pub fn loopback_list(version: &str) -> CniConfList {
    CniConfList {
        source: PathBuf::from("(built-in loopback)"),
        name: "cni-loopback".into(),
        cni_version: version.to_string(),
        plugins: vec![json!({ "type": "loopback" })],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("1.1.0", "1.1.0"));
        assert!(!version_at_least("1.0.0", "1.1.0"));
    }

    #[test]
    fn loads_first_sorted_and_wraps_conf() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load_conf_list(&d.path().join("missing")).unwrap(), None);
        assert_eq!(load_conf_list(d.path()).unwrap(), None);
        std::fs::write(
            d.path().join("20-b.conflist"),
            r#"{"name":"b","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.path().join("10-a.conf"),
            r#"{"name":"a","cniVersion":"0.3.1","type":"ptp"}"#,
        )
        .unwrap();
        std::fs::write(d.path().join("00-ignored.txt"), "x").unwrap();
        let l = load_conf_list(d.path()).unwrap().unwrap();
        assert_eq!(l.name, "a");
        assert_eq!(l.plugin_types(), vec!["ptp"]);
        assert_eq!(
            CniConfList::from_value(&l.to_value()).unwrap().plugins,
            l.plugins
        );
        std::fs::write(
            d.path().join("05-bad.conflist"),
            r#"{"name":"x","plugins":[{}]}"#,
        )
        .unwrap();
        assert!(load_conf_list(d.path()).is_err());
    }

    #[test]
    fn plugin_config_chains_and_capabilities() {
        let list = CniConfList {
            source: "x".into(),
            name: "net".into(),
            cni_version: "1.0.0".into(),
            plugins: vec![
                json!({"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}),
            ],
        };
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 80}]));
        caps.insert("bandwidth".into(), json!({"ingressRate": 1}));
        let rt = CniRuntime {
            container_id: "c".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            args: vec![("K8S_POD_NAME".into(), "p".into())],
            capability_args: caps,
            bin_dirs: vec![],
        };
        let prev = json!({"ips": []});
        let c = plugin_config(&list, &list.plugins[0], &rt, Some(&prev));
        assert_eq!(c["name"], "net");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["prevResult"], prev);
        assert_eq!(
            c["runtimeConfig"],
            json!({"portMappings": [{"hostPort": 80}]})
        );
        assert_eq!(rt.cni_args(), "IgnoreUnknown=1;K8S_POD_NAME=p");
    }

    #[test]
    fn ips_from_results() {
        let r = json!({"cniVersion":"1.0.0",
            "interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],
            "ips":[{"address":"fd00::5/64","interface":2},{"address":"10.1.0.5/24","interface":2},
                   {"address":"10.1.0.1/24","interface":0}]});
        assert_eq!(
            result_ips(&r),
            vec![
                "10.1.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let old = json!({"ip4":{"ip":"10.2.0.3/16"}});
        assert_eq!(
            result_ips(&old),
            vec!["10.2.0.3".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn missing_plugin_is_a_clear_error() {
        let e = find_plugin("nope", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert!(
            e.to_string().contains("\"nope\" not found in /nonexistent"),
            "{e}"
        );
    }
}
