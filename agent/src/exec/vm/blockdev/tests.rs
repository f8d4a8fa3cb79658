use serde_json::json;

use super::*;

fn node(name: &str, filename: &str, backing: Option<&str>) -> NamedNode {
    let mut node = json!({
        "node-name": name, "drv": "qcow2",
        "image": { "filename": filename, "virtual-size": 1 << 20 },
    });
    if let Some(backing) = backing {
        node["backing_file"] = backing.into();
    }
    serde_json::from_value(node).expect("a node")
}

fn file_node(name: &str, filename: &str) -> NamedNode {
    let node = json!({
        "node-name": name, "drv": "file",
        "image": { "filename": filename, "virtual-size": 1 << 20 },
    });
    serde_json::from_value(node).expect("a node")
}

#[test]
fn a_disk_is_matched_to_its_one_qcow2_node() {
    let nodes = [file_node("vd0-file", "/vms/a.qcow2"), node("vd0-fmt", "/vms/a.qcow2", None)];
    let found = match_disks(&nodes, &[PathBuf::from("/vms/a.qcow2")]).expect("found");
    assert_eq!(found.iter().map(|n| n.node_name.as_str()).collect::<Vec<_>>(), ["vd0-fmt"]);
    let missing = match_disks(&nodes, &[PathBuf::from("/vms/b.qcow2")]).expect_err("none");
    assert!(missing.contains("no qcow2 node"), "{missing}");
}

/// After an external snapshot the VM writes into the overlay: backing the named image up
/// would copy a disk that no longer changes, and call it current.
#[test]
fn a_disk_that_is_now_the_backing_file_of_an_overlay_is_refused_naming_it() {
    for backing in ["/vms/a.qcow2", "a.qcow2"] {
        let nodes = [
            node("vd0-fmt", "/vms/a.qcow2", None),
            node("snap", "/vms/a-overlay.qcow2", Some(backing)),
        ];
        let refused = match_disks(&nodes, &[PathBuf::from("/vms/a.qcow2")]).expect_err(backing);
        assert!(refused.contains("backing file of /vms/a-overlay.qcow2"), "{refused}");
        let overlay = match_disks(&nodes, &[PathBuf::from("/vms/a-overlay.qcow2")]);
        assert_eq!(overlay.expect("the overlay is the disk")[0].node_name, "snap");
    }
}
