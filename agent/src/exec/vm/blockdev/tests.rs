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

/// A raw image is attached, just not as qcow2: saying "no node" would send the operator
/// looking for the wrong thing.
#[test]
fn a_disk_attached_in_another_format_is_named_as_such() {
    let raw = |drv: &str| {
        let node = json!({
            "node-name": format!("vd0-{drv}"), "drv": drv,
            "image": { "filename": "/vms/r.img", "virtual-size": 1 << 20 },
        });
        serde_json::from_value::<NamedNode>(node).expect("a node")
    };
    let wanted = [PathBuf::from("/vms/r.img")];
    for nodes in [vec![raw("file"), raw("raw")], vec![raw("raw"), raw("throttle")]] {
        let refused = match_disks(&nodes, &wanted).expect_err("refused");
        assert_eq!(
            refused,
            "disk /vms/r.img: the VM has this image attached as raw, not as qcow2: Sluice backs \
             up qcow2 images only (their persistent bitmaps track the changes); convert it to qcow2"
        );
    }
    // A file node alone: the qcow2 node above it may go by a `json:` name.
    let file_only = match_disks(&[raw("file")], &wanted).expect_err("refused");
    assert!(file_only.contains("no qcow2 node"), "{file_only}");
    let vmdk = match_disks(&[raw("file"), raw("vmdk")], &wanted).expect_err("refused");
    assert!(vmdk.contains("attached as vmdk, not as qcow2"), "{vmdk}");
}
