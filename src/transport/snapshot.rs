//! Snapshots on the wire: a header (vote, metadata, size), then the file in chunks of
//! [`SNAPSHOT_CHUNK`], read from disk as gRPC drains them on the sending side and written to a
//! `.part` file and verified whole (format and checksum) on the receiving side before anyone
//! trusts it.

use std::future::Future;
use std::io::Write;

use bytes::Bytes;
use futures::StreamExt;
use openraft::errors::{ReplicationClosed, StreamingError};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::SnapshotResponse;
use openraft::OptionalSend;
use tokio::io::AsyncReadExt;
use tonic::{Status, Streaming};

use super::connection::{network_err, status_err, timeout, Connection};
use crate::codec::{decode, encode};
use crate::pb::raft::{snapshot_chunk, SnapshotChunk, SnapshotHeader};
use crate::storage::snapshot::SnapshotReader;
use crate::storage::SnapshotData;
use crate::types::{TypeConfig, Vote};

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Snapshot data is sent in chunks of this size.
pub(crate) const SNAPSHOT_CHUNK: usize = 1 << 20;

impl Connection {
    /// Streams a snapshot file: a header, then the data in chunks read as gRPC drains them.
    pub(super) async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client()?;
        let header = SnapshotHeader {
            cluster_id: self.fence.outgoing(),
            vote: Bytes::from(encode(&vote).map_err(network_err)?),
            meta: Bytes::from(encode(&snapshot.meta).map_err(network_err)?),
            size_bytes: snapshot.snapshot.file.metadata().map_err(network_err)?.len(),
            target: self.target,
        };
        let file = snapshot.snapshot.file.try_clone().map_err(network_err)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        // Read the file chunk by chunk as gRPC drains the channel: memory stays at a few chunks.
        let reader = tokio::spawn(async move {
            let mut file = tokio::fs::File::from_std(file);
            if tx
                .send(SnapshotChunk {
                    kind: Some(snapshot_chunk::Kind::Header(header)),
                })
                .await
                .is_err()
            {
                return Ok(());
            }
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                buf.truncate(filled);
                let chunk = SnapshotChunk {
                    kind: Some(snapshot_chunk::Kind::Data(Bytes::from(buf))),
                };
                if tx.send(chunk).await.is_err() {
                    return Ok(());
                }
            }
        });
        let ttl = option.hard_ttl();
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let result = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = tokio::time::timeout(ttl, call) => r,
        };
        let resp = match result {
            Err(_) => {
                reader.abort();
                return Err(StreamingError::Timeout(timeout(
                    RPCTypes::InstallSnapshot,
                    self.target,
                    ttl,
                )));
            }
            Ok(Err(status)) => return Err(StreamingError::from(status_err(status))),
            Ok(Ok(resp)) => resp,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(StreamingError::Network(network_err(format!(
                    "reading snapshot file: {e}"
                ))))
            }
            Err(e) => return Err(StreamingError::Network(network_err(e))),
        }
        decode(&resp.into_inner().payload).map_err(|e| StreamingError::Network(network_err(e)))
    }
}

/// Writes the data chunks to `path`, then verifies the whole file (format and checksum)
/// before anyone trusts it.
pub(super) async fn receive_snapshot(
    stream: &mut Streaming<SnapshotChunk>,
    path: &std::path::Path,
    expected: u64,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing snapshot: {e}"));
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut received = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk?.kind {
            Some(snapshot_chunk::Kind::Data(data)) => {
                received += data.len() as u64;
                file.write_all(&data).map_err(io)?;
            }
            _ => {
                return Err(Status::invalid_argument(
                    "only data chunks may follow the snapshot header",
                ))
            }
        }
    }
    if received != expected {
        return Err(Status::data_loss(format!(
            "snapshot truncated: received {received} of {expected} bytes"
        )));
    }
    let file = file.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || SnapshotReader::open(&path)?.verify())
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::data_loss(format!("received snapshot is corrupt: {e}")))?;
    Ok(())
}
