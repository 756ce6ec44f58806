//! The CRD copies in the repository are generated from the Rust types; this fails when they
//! drift. Regenerate with:
//!   cargo run -p raftkv-operator -- crd > manifests/crd.yaml
//!   cp manifests/crd.yaml charts/raftkv/crds/raftcluster.yaml

#[test]
fn crd_copies_match_the_generated_crd() {
    let generated = raftkv_operator::crd::crd_yaml().expect("generate the CRD");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for copy in ["manifests/crd.yaml", "charts/raftkv/crds/raftcluster.yaml"] {
        let on_disk = std::fs::read_to_string(format!("{root}/{copy}")).unwrap_or_default();
        assert!(
            on_disk == generated,
            "{copy} differs from `raftkv-operator crd`: regenerate it (see the header of operator/tests/crd_drift.rs)"
        );
    }
}
