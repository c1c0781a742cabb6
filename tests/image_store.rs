//! ImageStore against a real Debian docker-registry on 127.0.0.1, with
//! images built in the test from busybox-static.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Result;
use berth::image::{ImageConfig, ImageError, ImageStore, RegistryAuth, RootfsMount};
use common::oci_image::{self, Compression, Format, LayerBuilder, host_arch};
use common::registry::Registry;

fn config(dir: &Path) -> ImageConfig {
    ImageConfig {
        registries_config: dir.join("registries.conf"),
        ..ImageConfig::default()
    }
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    cfg: ImageConfig,
}

fn env() -> Env {
    let tmp = tempfile::Builder::new()
        .prefix("berth-image-test-")
        .tempdir()
        .unwrap();
    let root = tmp.path().join("images");
    let cfg = config(tmp.path());
    Env {
        _tmp: tmp,
        root,
        cfg,
    }
}

/// An overlay mount, unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(m: &RootfsMount, target: &Path) -> Self {
        std::fs::create_dir_all(target).unwrap();
        // The overlay as the shim mounts it (runtime::overlay).
        let layers = berth::runtime::idmap::parse_overlay(&m.options());
        berth::runtime::overlay::mount_overlay(&layers, nix::mount::MsFlags::empty(), target)
            .unwrap();
        Mounted(target.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::empty());
    }
}

fn count_entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_busybox_list_get_reopen_remove() -> Result<()> {
    let reg = Registry::start()?;
    let img = oci_image::image(
        vec![LayerBuilder::new().busybox().finish(Compression::Gzip)],
        Format::Oci,
        host_arch(),
    );
    oci_image::push(&reg.pusher(), "test/busybox", Some("v1"), &img).await?;
    oci_image::push(&reg.pusher(), "test/busybox", Some("v2"), &img).await?;
    let e = env();
    let name = format!("{}/test/busybox:v1", reg.host);
    let id;
    {
        let store = ImageStore::open(&e.root, &e.cfg).await?;
        let rec = store.pull(&name, None).await?;
        id = rec.id.clone();
        assert_eq!(rec.id, img.config_digest);
        assert_eq!(rec.repo_tags, vec![name.clone()]);
        assert_eq!(
            rec.repo_digests,
            vec![format!("{}/test/busybox@{}", reg.host, img.manifest_digest)]
        );
        assert_eq!(rec.chain_ids, vec![img.layers[0].diff_id.clone()]);
        assert_eq!(rec.config_json, img.config);
        // The snapshot holds busybox byte for byte.
        let snap = store.snapshot_path(&rec.chain_ids[0]);
        assert_eq!(
            std::fs::read(snap.join("bin/busybox"))?,
            std::fs::read("/bin/busybox")?
        );
        assert_eq!(
            std::fs::metadata(snap.join("bin/busybox"))?
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            std::fs::read_link(snap.join("bin/sh"))?,
            Path::new("busybox")
        );
        // Second tag of the same image.
        let rec2 = store
            .pull(&format!("{}/test/busybox:v2", reg.host), None)
            .await?;
        assert_eq!(rec2.id, id);
        assert_eq!(rec2.repo_tags.len(), 2);
        assert_eq!(store.list()?.len(), 1);
        // Lookups by tag, id, bare hex, short id, digest ref.
        for r in [
            name.clone(),
            id.clone(),
            id.trim_start_matches("sha256:").to_owned(),
            id["sha256:".len().."sha256:".len() + 12].to_owned(),
            format!("{}/test/busybox@{}", reg.host, img.manifest_digest),
        ] {
            assert_eq!(store.get(&r)?.map(|r| r.id), Some(id.clone()), "lookup {r}");
        }
        assert!(store.get("nothing/here:1")?.is_none());
        assert!(store.fs_usage()?.used_bytes > 1_000_000);
    }
    // Reopen: the image is still there.
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    let rec = store.get(&name)?.expect("image survives reopen");
    assert_eq!(rec.id, id);
    // Untag v1: the image stays under v2.
    store.remove(&name).await?;
    let rec = store.get(&id)?.expect("still tagged v2");
    assert_eq!(rec.repo_tags, vec![format!("{}/test/busybox:v2", reg.host)]);
    assert!(store.get(&name)?.is_none());
    // Removing an unknown image is fine.
    store.remove("127.0.0.1:1/nothing:here").await?;
    // Remove by id: everything goes, and GC takes blobs and snapshots.
    let before = store.fs_usage()?;
    store.remove(&id).await?;
    assert!(store.list()?.is_empty());
    assert_eq!(count_entries(&e.root.join("blobs/sha256")), 0);
    assert_eq!(count_entries(&e.root.join("snapshots")), 0);
    let after = store.fs_usage()?;
    assert!(after.used_bytes < before.used_bytes && after.inodes_used < before.inodes_used);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_layer_whiteouts_opaque_zstd_mount() -> Result<()> {
    let reg = Registry::start()?;
    let base = LayerBuilder::new()
        .busybox()
        .file("etc/removed", b"gone", 0o644)
        .file("etc/kept", b"kept", 0o644)
        .dir("data")
        .file("data/old1", b"1", 0o644)
        .file("data/old2", b"2", 0o644)
        .finish(Compression::Gzip);
    let mid = LayerBuilder::new()
        .dir("etc")
        .whiteout("etc/removed")
        .dir("data")
        .opaque("data")
        .file("data/new", b"new", 0o644)
        .finish(Compression::Zstd);
    let top = LayerBuilder::new()
        .file("top.txt", b"top", 0o600)
        .finish(Compression::None);
    let img = oci_image::image(vec![base, mid, top], Format::Docker, host_arch());
    oci_image::push(&reg.pusher(), "test/layers", Some("latest"), &img).await?;

    let e = env();
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    let rec = store
        .pull(&format!("{}/test/layers", reg.host), None)
        .await?;
    assert_eq!(rec.chain_ids.len(), 3);
    let mid_snap = store.snapshot_path(&rec.chain_ids[1]);
    let wh = std::fs::symlink_metadata(mid_snap.join("etc/removed"))?;
    assert!(wh.file_type().is_char_device(), "whiteout is a char device");
    let mut buf = [0u8; 4];
    let n = rustix::fs::getxattr(mid_snap.join("data"), "trusted.overlay.opaque", &mut buf)?;
    assert_eq!(&buf[..n], b"y");

    let m = store.prepare_rootfs(&rec.id, "image-test-ml")?;
    assert_eq!(m.lower_dirs.len(), 3);
    assert_eq!(
        m.lower_dirs[0],
        store.snapshot_path(&rec.chain_ids[2]),
        "top-most first"
    );
    let target = e.root.parent().unwrap().join("mnt");
    {
        let _mounted = Mounted::new(&m, &target);
        assert!(target.join("bin/busybox").is_file());
        assert!(!target.join("etc/removed").exists(), "whited out");
        assert_eq!(std::fs::read(target.join("etc/kept"))?, b"kept");
        assert!(
            !target.join("data/old1").exists(),
            "opaque dir hides lower content"
        );
        assert_eq!(std::fs::read(target.join("data/new"))?, b"new");
        assert_eq!(std::fs::read(target.join("top.txt"))?, b"top");
        std::fs::write(target.join("written"), b"w")?;
    }
    assert!(
        m.upper_dir.join("written").exists(),
        "writes go to the container's upper dir"
    );
    // The rootfs holds the snapshots even after the image is removed.
    store.remove(&rec.id).await?;
    assert!(store.snapshot_path(&rec.chain_ids[0]).is_dir());
    store.remove_rootfs("image-test-ml")?;
    store.remove_rootfs("image-test-ml")?;
    store.gc().await?;
    assert!(!store.snapshot_path(&rec.chain_ids[0]).exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_platform_index_resolves_to_host() -> Result<()> {
    let reg = Registry::start()?;
    let other_arch = if host_arch() == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let mine = oci_image::image(
        vec![LayerBuilder::new().busybox().finish(Compression::Gzip)],
        Format::Oci,
        host_arch(),
    );
    let other = oci_image::image(
        vec![
            LayerBuilder::new()
                .file("wrong-arch", b"x", 0o644)
                .finish(Compression::Gzip),
        ],
        Format::Oci,
        other_arch,
    );
    let index_digest =
        oci_image::push_index(&reg.pusher(), "test/multi", "1.0", &[&other, &mine]).await?;
    let e = env();
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    let rec = store
        .pull(&format!("{}/test/multi:1.0", reg.host), None)
        .await?;
    assert_eq!(rec.id, mine.config_digest);
    assert_eq!(
        rec.repo_digests,
        vec![format!("{}/test/multi@{index_digest}", reg.host)]
    );
    // By digest too.
    let rec2 = store
        .pull(&format!("{}/test/multi@{index_digest}", reg.host), None)
        .await?;
    assert_eq!(rec2.id, mine.config_digest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sixty_layers_mount() -> Result<()> {
    let reg = Registry::start()?;
    let mut layers = vec![LayerBuilder::new().busybox().finish(Compression::Gzip)];
    for i in 1..60 {
        layers.push(
            LayerBuilder::new()
                .dir("layers")
                .file(
                    &format!("layers/{i:02}"),
                    format!("layer {i}").as_bytes(),
                    0o644,
                )
                .finish(if i % 2 == 0 {
                    Compression::Zstd
                } else {
                    Compression::Gzip
                }),
        );
    }
    let img = oci_image::image(layers, Format::Oci, host_arch());
    oci_image::push(&reg.pusher(), "test/sixty", Some("latest"), &img).await?;
    let e = env();
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    let rec = store
        .pull(&format!("{}/test/sixty:latest", reg.host), None)
        .await?;
    assert_eq!(rec.chain_ids.len(), 60);
    let m = store.prepare_rootfs(&rec.id, "image-test-60")?;
    assert!(
        m.options().len() > 4096,
        "the classic option string would not fit a page"
    );
    let target = e.root.parent().unwrap().join("mnt60");
    {
        let _mounted = Mounted::new(&m, &target);
        for i in 1..60 {
            assert_eq!(
                std::fs::read_to_string(target.join(format!("layers/{i:02}")))?,
                format!("layer {i}")
            );
        }
        assert!(target.join("bin/busybox").is_file());
    }
    store.remove_rootfs("image-test-60")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_blob_is_refused_and_nothing_stored_then_retry_works() -> Result<()> {
    let reg = Registry::start()?;
    let img = oci_image::image(
        vec![
            LayerBuilder::new().busybox().finish(Compression::Gzip),
            LayerBuilder::new()
                .file("second", b"2", 0o644)
                .finish(Compression::Gzip),
        ],
        Format::Oci,
        host_arch(),
    );
    oci_image::push(&reg.pusher(), "test/corrupt", Some("v1"), &img).await?;
    let blob = reg.blob_path(&img.layers[0].digest);
    let good = std::fs::read(&blob)?;
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&blob, &bad)?;

    let e = env();
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    let name = format!("{}/test/corrupt:v1", reg.host);
    let err = store.pull(&name, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::Verification { .. } | ImageError::UnsafeLayer { .. }
        ),
        "unexpected error: {err}"
    );
    assert!(store.list()?.is_empty());
    assert!(store.get(&name)?.is_none());
    assert_eq!(
        count_entries(&e.root.join("snapshots")),
        0,
        "no snapshot left"
    );
    assert_eq!(
        count_entries(&e.root.join("blobs/sha256")),
        0,
        "no blob left"
    );
    assert_eq!(count_entries(&e.root.join("tmp")), 0, "no temp left");
    drop(store);
    // Fixed registry: the retry succeeds.
    std::fs::write(&blob, &good)?;
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    let rec = store.pull(&name, None).await?;
    assert_eq!(rec.id, img.config_digest);

    // A config whose bytes do not match its digest is refused as well.
    let bad_cfg = reg.blob_path(&img.config_digest);
    let mut c = std::fs::read(&bad_cfg)?;
    c[0] = b' ';
    std::fs::write(&bad_cfg, &c)?;
    let e2 = env();
    let store2 = ImageStore::open(&e2.root, &e2.cfg).await?;
    assert!(matches!(
        store2.pull(&name, None).await,
        Err(ImageError::Verification { .. })
    ));
    assert!(store2.list()?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_registry() -> Result<()> {
    let reg = Registry::start_with_auth("berth", "s3cret")?;
    let img = oci_image::image(
        vec![LayerBuilder::new().busybox().finish(Compression::Gzip)],
        Format::Oci,
        host_arch(),
    );
    oci_image::push(&reg.pusher(), "private/app", Some("1"), &img).await?;
    let e = env();
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    let name = format!("{}/private/app:1", reg.host);
    let err = store.pull(&name, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthenticated { .. }), "{err}");
    let wrong = RegistryAuth {
        username: "berth".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = store.pull(&name, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthenticated { .. }), "{err}");
    assert!(store.list()?.is_empty());
    // The Docker `auth` field: base64("berth:s3cret").
    let right = RegistryAuth {
        auth: "YmVydGg6czNjcmV0".into(),
        ..Default::default()
    };
    let rec = store.pull(&name, Some(&right)).await?;
    assert_eq!(rec.id, img.config_digest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn mirrors_and_blocked_registries() -> Result<()> {
    let reg = Registry::start()?;
    let img = oci_image::image(
        vec![LayerBuilder::new().busybox().finish(Compression::Gzip)],
        Format::Oci,
        host_arch(),
    );
    oci_image::push(&reg.pusher(), "mirrored/team/app", Some("1"), &img).await?;
    // The primary location is a loopback port nobody listens on; the mirror
    // (the real registry, under another namespace) serves the image.
    let dead = common::registry::free_port()?;
    let e = env();
    std::fs::write(
        &e.cfg.registries_config,
        format!(
            r#"
unqualified-search-registries = ["127.0.0.1:{dead}", "{host}"]

[[registry]]
prefix = "127.0.0.1:{dead}/team"
location = "127.0.0.1:{dead}/team"
[[registry.mirror]]
location = "127.0.0.1:{dead}/also-dead"
[[registry.mirror]]
location = "{host}/mirrored/team"

[[registry]]
prefix = "{host}/forbidden"
blocked = true
"#,
            host = reg.host
        ),
    )?;
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    let name = format!("127.0.0.1:{dead}/team/app:1");
    let rec = store.pull(&name, None).await?;
    assert_eq!(rec.id, img.config_digest);
    assert_eq!(
        rec.repo_tags,
        vec![name.clone()],
        "the image is known under the name asked for"
    );
    // An unqualified name: the search registries in order (the first is down).
    let rec = store.pull("mirrored/team/app:1", None).await?;
    assert!(
        rec.repo_tags
            .contains(&format!("{}/mirrored/team/app:1", reg.host))
    );
    assert_eq!(rec.repo_tags.len(), 2, "same image, second tag");
    assert_eq!(
        store.get("mirrored/team/app:1")?.map(|r| r.id),
        Some(img.config_digest.clone())
    );
    store.remove("mirrored/team/app:1").await?;
    assert!(
        store
            .get(&format!("{}/mirrored/team/app:1", reg.host))?
            .is_none()
    );
    assert!(
        store.get(&name)?.is_some(),
        "the other tag of the image stays"
    );
    let err = store
        .pull(&format!("{}/forbidden/app:1", reg.host), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Blocked(_)), "{err}");
    // A broken registries.conf is a clear error.
    std::fs::write(&e.cfg.registries_config, "[[registry]]\ninsecure = 3\n")?;
    let err = store.pull(&name, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Config { .. }), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_registry_times_out() -> Result<()> {
    // A listener that accepts and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let holder = std::thread::spawn(move || {
        let mut held = Vec::new();
        for _ in 0..4 {
            match listener.accept() {
                Ok((s, _)) => held.push(s),
                Err(_) => break,
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
    });
    let e = env();
    let cfg = ImageConfig {
        stall_timeout_secs: 1,
        ..e.cfg.clone()
    };
    let store = ImageStore::open(&e.root, &cfg).await?;
    let err = store
        .pull(&format!("127.0.0.1:{port}/x/y:1"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Stalled { .. }), "{err}");
    drop(holder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_layers_are_unpacked_once_and_kept_while_used() -> Result<()> {
    let reg = Registry::start()?;
    let base = LayerBuilder::new().busybox().finish(Compression::Gzip);
    let a = oci_image::image(
        vec![
            base.clone(),
            LayerBuilder::new()
                .file("a", b"a", 0o644)
                .finish(Compression::Gzip),
        ],
        Format::Oci,
        host_arch(),
    );
    let b = oci_image::image(
        vec![
            base.clone(),
            LayerBuilder::new()
                .file("b", b"b", 0o644)
                .finish(Compression::Gzip),
        ],
        Format::Oci,
        host_arch(),
    );
    oci_image::push(&reg.pusher(), "test/a", Some("1"), &a).await?;
    oci_image::push(&reg.pusher(), "test/b", Some("1"), &b).await?;
    let e = env();
    let store = std::sync::Arc::new(ImageStore::open(&e.root, &e.cfg).await?);
    let (na, nb) = (
        format!("{}/test/a:1", reg.host),
        format!("{}/test/b:1", reg.host),
    );
    let (ra, rb) = tokio::join!(store.pull(&na, None), store.pull(&nb, None));
    let (ra, rb) = (ra?, rb?);
    assert_eq!(ra.chain_ids[0], rb.chain_ids[0]);
    assert_eq!(
        count_entries(&e.root.join("snapshots")),
        3,
        "base unpacked once"
    );
    store.remove(&format!("{}/test/a:1", reg.host)).await?;
    assert!(
        store
            .snapshot_path(&rb.chain_ids[0])
            .join("bin/busybox")
            .is_file()
    );
    assert!(!store.snapshot_path(&ra.chain_ids[1]).exists());
    assert_eq!(store.list()?.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn unclean_stop_leftovers_are_cleaned_on_open() -> Result<()> {
    let e = env();
    {
        let _store = ImageStore::open(&e.root, &e.cfg).await?;
    }
    // What a crash mid-pull leaves: temp files, a renamed but uncommitted
    // snapshot and blob, a container dir without a hold.
    std::fs::create_dir_all(e.root.join("tmp/snap-x/bin"))?;
    std::fs::write(e.root.join("tmp/partial"), b"x")?;
    let fake = "0".repeat(64);
    std::fs::create_dir_all(e.root.join("snapshots").join(&fake))?;
    std::fs::write(e.root.join("blobs/sha256").join(&fake), b"x")?;
    std::fs::create_dir_all(e.root.join("containers/ghost/upper"))?;
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    assert_eq!(count_entries(&e.root.join("tmp")), 0);
    assert_eq!(count_entries(&e.root.join("snapshots")), 0);
    assert_eq!(count_entries(&e.root.join("blobs/sha256")), 0);
    assert_eq!(count_entries(&e.root.join("containers")), 0);
    assert!(store.list()?.is_empty());
    // prepare_rootfs of an unknown image is NotFound; bad container ids are refused.
    assert!(matches!(
        store.prepare_rootfs("sha256:nope", "c1"),
        Err(ImageError::NotFound(_))
    ));
    assert!(store.prepare_rootfs("x", "../escape").is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_registry() -> Result<()> {
    let reg = Registry::start_with_token_auth("berth", "t0ken-pass", "identity-refresh-123")?;
    let img = oci_image::image(
        vec![LayerBuilder::new().busybox().finish(Compression::Zstd)],
        Format::Oci,
        host_arch(),
    );
    if let Err(e) = oci_image::push(&reg.pusher(), "secure/app", Some("1"), &img).await {
        anyhow::bail!("{e}; registry log: {}", reg.log());
    }
    let name = format!("{}/secure/app:1", reg.host);
    let e = env();
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    // Anonymous: the token server refuses.
    let err = store.pull(&name, None).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthenticated { .. }), "{err}");
    let wrong = RegistryAuth {
        username: "berth".into(),
        password: "nope".into(),
        ..Default::default()
    };
    let err = store.pull(&name, Some(&wrong)).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthenticated { .. }), "{err}");
    assert!(store.list()?.is_empty());
    // Username/password → token (GET with basic auth).
    let right = RegistryAuth {
        username: "berth".into(),
        password: "t0ken-pass".into(),
        ..Default::default()
    };
    assert_eq!(store.pull(&name, Some(&right)).await?.id, img.config_digest);
    store.remove(&img.config_digest).await?;
    // Identity token → OAuth2 refresh-token grant (POST).
    let identity = RegistryAuth {
        identity_token: "identity-refresh-123".into(),
        ..Default::default()
    };
    assert_eq!(
        store.pull(&name, Some(&identity)).await?.id,
        img.config_digest
    );
    let bad_identity = RegistryAuth {
        identity_token: "stale".into(),
        ..Default::default()
    };
    let e2 = env();
    let store2 = ImageStore::open(&e2.root, &e2.cfg).await?;
    let err = store2.pull(&name, Some(&bad_identity)).await.unwrap_err();
    assert!(matches!(err, ImageError::Unauthenticated { .. }), "{err}");
    // A registry token is sent as is; the token server is not asked.
    let token = reg.token.as_ref().unwrap();
    let before = token.requests.load(std::sync::atomic::Ordering::SeqCst);
    let registry_token = RegistryAuth {
        registry_token: token.minter.mint("secure/app", &["pull"])?,
        ..Default::default()
    };
    assert_eq!(
        store2.pull(&name, Some(&registry_token)).await?.id,
        img.config_digest
    );
    assert_eq!(
        token.requests.load(std::sync::atomic::Ordering::SeqCst),
        before
    );
    Ok(())
}

/// Incompressible bytes (xorshift), so layers have a real size on the wire.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_pull_leaves_nothing_and_can_be_retried() -> Result<()> {
    let reg = Registry::start()?;
    let img = oci_image::image(
        vec![
            LayerBuilder::new().busybox().finish(Compression::Gzip),
            LayerBuilder::new()
                .file("big1", &noise(16 << 20, 7), 0o644)
                .finish(Compression::None),
            LayerBuilder::new()
                .file("big2", &noise(16 << 20, 9), 0o644)
                .finish(Compression::None),
        ],
        Format::Oci,
        host_arch(),
    );
    oci_image::push(&reg.pusher(), "test/big", Some("1"), &img).await?;
    let name = format!("{}/test/big:1", reg.host);
    let e = env();
    let store = std::sync::Arc::new(ImageStore::open(&e.root, &e.cfg).await?);
    let task = {
        let store = store.clone();
        let name = name.clone();
        tokio::spawn(async move { store.pull(&name, None).await })
    };
    // Interrupt once a layer is being unpacked.
    let mut interrupted = false;
    for _ in 0..2000 {
        let busy = std::fs::read_dir(e.root.join("tmp"))?.flatten().any(|d| {
            d.file_name().to_string_lossy().starts_with("snap-") && count_entries(&d.path()) > 0
        });
        if busy || task.is_finished() {
            interrupted = !task.is_finished();
            task.abort();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _ = task.await; // the aborted pull's future is dropped
    assert!(
        interrupted,
        "the pull finished before it could be interrupted"
    );
    assert!(
        store.list()?.is_empty(),
        "an interrupted pull is not visible"
    );
    assert!(store.get(&name)?.is_none());
    drop(store);
    // Reopen (as after a crash): no trace left.
    let store = ImageStore::open(&e.root, &e.cfg).await?;
    assert_eq!(count_entries(&e.root.join("snapshots")), 0);
    assert_eq!(count_entries(&e.root.join("blobs/sha256")), 0);
    assert!(store.list()?.is_empty());
    // The retry succeeds.
    let rec = store.pull(&name, None).await?;
    assert_eq!(rec.id, img.config_digest);
    let snap = store.snapshot_path(&rec.chain_ids[2]);
    assert_eq!(std::fs::metadata(snap.join("big2"))?.len(), 16 << 20);
    Ok(())
}
