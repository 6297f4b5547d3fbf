//! Live reload of the records file: edits by rename, bad files refused with the last good
//! records still serving, deletion, and publishing from the control plane.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use meshapi::dns::Records;
use support::*;

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn reloads_on_change_and_keeps_last_good_on_bad_files() {
    let s = start(RECORDS, vec![]).await;
    let addr = s.addr();
    assert_eq!(resolve(addr, "backend.").await.1, vec!["127.240.0.10"]);

    // An editor-style replace (write + rename) with a new service and a moved VIP.
    let edited = RECORDS.replace("127.240.0.10", "127.240.0.20")
        + "  - { name: cache, vip: 127.240.0.30 }\n";
    replace_file(&s.file, &edited);
    eventually("cache to appear", DEADLINE, || async {
        resolve(addr, "cache.").await.1 == vec!["127.240.0.30"]
    })
    .await;
    assert_eq!(resolve(addr, "backend.").await.1, vec!["127.240.0.20"]);

    // Half-written, invalid and unknown-field files are refused; the last good records stay.
    let before = s.bound.records().status().attempts;
    let bad_files = [
        edited[..edited.len() / 2].to_string(),
        edited.replace("127.240.0.30", "127.240.0.20"), // duplicate VIP
        edited.replace("vip: 127.240.0.11", "vip: 127.240.0.11, colour: red"),
        String::new(),
    ];
    for (i, bad) in bad_files.iter().enumerate() {
        std::fs::write(&s.file, bad).unwrap();
        let want = before + 1 + i as u64;
        eventually("the bad file to be read", DEADLINE, || async {
            s.bound.records().status().attempts >= want
        })
        .await;
        let status = s.bound.records().status();
        assert!(status.last_error.is_some(), "bad file {i} accepted");
        assert_eq!(
            resolve(addr, "cache.").await.1,
            vec!["127.240.0.30"],
            "after bad file {i}"
        );
        assert_eq!(
            resolve(addr, "backend.default.svc.cluster.local.").await.1,
            vec!["127.240.0.20"]
        );
    }
    let err = s.bound.records().status().last_error.unwrap();
    assert!(err.contains("records.yaml"), "error names the file: {err}");

    // Deleting the file keeps serving; writing a good one again is picked up.
    std::fs::remove_file(&s.file).unwrap();
    let attempts = s.bound.records().status().attempts;
    eventually("the deletion to be noticed", DEADLINE, || async {
        s.bound.records().status().attempts > attempts
    })
    .await;
    assert_eq!(resolve(addr, "cache.").await.1, vec!["127.240.0.30"]);
    replace_file(&s.file, RECORDS);
    eventually("cache to go away", DEADLINE, || async {
        resolve(addr, "cache.").await.0 == ResponseCode::ServFail
    })
    .await;
    assert_eq!(resolve(addr, "backend.").await.1, vec!["127.240.0.10"]);
    assert_eq!(s.bound.records().status().last_error, None);
}

#[tokio::test]
async fn control_plane_publishes_records_directly() {
    let s = start("services: []\n", vec![]).await;
    let addr = s.addr();
    assert_eq!(
        resolve(addr, "backend.default.svc.cluster.local.").await.0,
        ResponseCode::NXDomain
    );
    let records = Records::from_yaml(RECORDS, "cp").unwrap();
    assert!(s.bound.records().publish(records.clone()).unwrap());
    assert!(
        !s.bound.records().publish(records.clone()).unwrap(),
        "same records: no swap"
    );
    assert_eq!(
        resolve(addr, "backend.default.svc.cluster.local.").await.1,
        vec!["127.240.0.10"]
    );

    let mut bad = records;
    bad.services[1].vip = bad.services[0].vip;
    assert!(s.bound.records().publish(bad).is_err());
    assert_eq!(resolve(addr, "frontend.").await.1, vec!["127.240.0.11"]);
}

#[tokio::test]
async fn a_bad_file_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.yaml");
    std::fs::write(
        &file,
        "services:\n  - name: Bad_Name\n    vip: 127.240.0.1\n",
    )
    .unwrap();
    let cfg = meshdns::Config {
        records_file: Some(file),
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: meshdns::Upstreams::Static(vec![]),
        ..meshdns::Config::default()
    };
    let err = meshdns::build(cfg).await.unwrap_err().to_string();
    assert!(err.contains("services[0].name"), "{err}");
}

#[tokio::test]
async fn symlink_swap_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    for (v, vip) in [("v1", "127.240.0.10"), ("v2", "127.240.0.99")] {
        std::fs::create_dir(dir.path().join(v)).unwrap();
        std::fs::write(
            dir.path().join(v).join("records.yaml"),
            RECORDS.replace("127.240.0.10", vip),
        )
        .unwrap();
    }
    let link = dir.path().join("records.yaml");
    std::os::unix::fs::symlink("v1/records.yaml", &link).unwrap();
    let cfg = meshdns::Config {
        records_file: Some(link.clone()),
        listen: "127.0.0.1:0".parse().unwrap(),
        upstreams: meshdns::Upstreams::Static(vec![]),
        reload_debounce: Duration::from_millis(50),
        ..meshdns::Config::default()
    };
    let bound = meshdns::build(cfg).await.unwrap();
    let addr = bound.udp_addr;
    assert_eq!(resolve(addr, "backend.").await.1, vec!["127.240.0.10"]);
    // Atomic swap: a new link renamed over the old one.
    let tmp = dir.path().join("records.yaml.new");
    std::os::unix::fs::symlink("v2/records.yaml", &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    eventually("the swapped target to be served", DEADLINE, || async {
        resolve(addr, "backend.").await.1 == vec!["127.240.0.99"]
    })
    .await;
}
