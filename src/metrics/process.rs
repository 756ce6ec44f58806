//! This node's identity (`raftkv_node_info`) and, on Linux, the process collector (processor
//! time, memory, open files: the `process_*` series).

use prometheus::{IntGaugeVec, Opts, Registry};

use super::register;
use crate::types::NodeId;

/// Registers what describes node `id` and its process: the info series and the process
/// collector.
pub(super) fn register_node(r: &Registry, id: NodeId) -> Result<(), prometheus::Error> {
    let info = register(
        r,
        IntGaugeVec::new(
            Opts::new(
                "raftkv_node_info",
                "Constant 1, labelled with this node's id and version.",
            ),
            &["node_id", "version"],
        )?,
    )?;
    info.with_label_values(&[&id.to_string(), env!("CARGO_PKG_VERSION")])
        .set(1);
    #[cfg(target_os = "linux")]
    r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
    Ok(())
}
