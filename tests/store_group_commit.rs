//! The metadata store under concurrent writers (issue 15): writes are
//! group-committed and reads are served from memory, so these check that no
//! write is lost or reordered, that each writer reads its own write at once,
//! and that everything is in the database after a reopen. Plain threads
//! and tokio tasks on a multi-threaded runtime (where a waiting writer moves
//! its worker aside).

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use berth::store::{ContainerRecord, ContainerState, MetadataStore, PodRecord};

fn pod(id: &str, name: &str) -> PodRecord {
    PodRecord {
        id: id.into(),
        name: name.into(),
        ..Default::default()
    }
}

#[test]
fn concurrent_writers_lose_nothing_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let store = Arc::new(MetadataStore::open(&path).unwrap());
    let threads = 8;
    let per_thread = 25;
    let start = Arc::new(Barrier::new(threads));
    let mut handles = Vec::new();
    for t in 0..threads {
        let (store, start) = (store.clone(), start.clone());
        handles.push(std::thread::spawn(move || {
            start.wait();
            for i in 0..per_thread {
                let id = format!("p{t}-{i}");
                store.put_pod(&pod(&id, "first")).unwrap();
                // Its own write is visible at once.
                assert_eq!(store.pod(&id).unwrap().unwrap().name, "first");
                // The later write of one id wins.
                store.put_pod(&pod(&id, "second")).unwrap();
                if i % 5 == 0 {
                    store.delete_pod(&id).unwrap();
                    assert!(store.pod(&id).unwrap().is_none());
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let expected: BTreeSet<String> = (0..threads)
        .flat_map(|t| {
            (0..per_thread)
                .filter(|i| i % 5 != 0)
                .map(move |i| format!("p{t}-{i}"))
        })
        .collect();
    let listed = |s: &MetadataStore| -> BTreeSet<String> {
        let pods = s.pods().unwrap();
        assert!(pods.iter().all(|p| p.name == "second"), "a stale write won");
        pods.into_iter().map(|p| p.id).collect()
    };
    assert_eq!(listed(&store), expected);
    drop(store);
    let store = MetadataStore::open(&path).unwrap();
    assert_eq!(
        listed(&store),
        expected,
        "what the database holds after a reopen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_on_a_multi_threaded_runtime_all_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    let store = Arc::new(MetadataStore::open(&path).unwrap());
    store.put_pod(&pod("pod", "web")).unwrap();
    // More writers than workers: a writer waiting for a commit must not
    // keep the others from running.
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                let c = ContainerRecord {
                    id: format!("c{t}-{i}"),
                    pod_id: "pod".into(),
                    state: ContainerState::Running,
                    ..Default::default()
                };
                store.put_container(&c).unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(store.containers_of("pod").unwrap().len(), 160);
    assert_eq!(store.containers_shared().len(), 160);
    assert!(store.containers_of("other").unwrap().is_empty());
    drop(store);
    let store = MetadataStore::open(&path).unwrap();
    assert_eq!(store.containers().unwrap().len(), 160);
}
