//! The snapshot file: a self-describing, checksummed dump of the state machine.
//!
//! ```text
//! "RKVSNAP3" | u32 meta_len | meta (postcard SnapshotMeta) | u64 store revision
//! | u32 auth_len | auth state (`AuthState::to_bytes`)
//! { 0x01 | u32 key_len | key | u64 revision | u32 value_len | value }*
//! 0x00 | u64 record_count | u32 crc32 (of every byte before it)
//! ```
//! Version 2 files (`RKVSNAP2`) lack the auth state (an empty one stands in: no users,
//! authentication off). Version 1 files (`RKVSNAP1`) also lack the store revision: revisions
//! were log indexes then, so the last applied index stands in for it.
//! The same format is a snapshot on disk, a snapshot on the wire and (later) a backup file: a
//! node can verify any of them before it trusts a byte.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::auth::AuthState;
use crate::codec::{decode, encode};
use crate::types::SnapshotMeta;

const MAGIC: &[u8; 8] = b"RKVSNAP3";
const MAGIC_V2: &[u8; 8] = b"RKVSNAP2";
const MAGIC_V1: &[u8; 8] = b"RKVSNAP1";
const TAG_RECORD: u8 = 1;
const TAG_END: u8 = 0;
/// Upper bound on a key or value in a snapshot; anything bigger means a corrupt file.
const MAX_FIELD: u32 = 64 << 20;

/// A snapshot's data as openraft passes it around: an open file (still readable if a newer
/// snapshot replaces it on disk) and where it lives.
#[derive(Debug)]
pub struct SnapshotData {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
}

impl SnapshotData {
    pub(crate) fn open(path: PathBuf) -> io::Result<Self> {
        Ok(SnapshotData {
            file: File::open(&path)?,
            path,
        })
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes a snapshot record by record; sealing it appends the count and checksum.
pub(crate) struct SnapshotWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    count: u64,
    bytes: u64,
}

impl SnapshotWriter<BufWriter<File>> {
    pub(crate) fn create(path: &Path, meta: &SnapshotMeta, revision: u64, auth: &AuthState) -> io::Result<Self> {
        Self::new(
            BufWriter::with_capacity(1 << 20, File::create(path)?),
            meta,
            revision,
            auth,
        )
    }

    /// Seals and fsyncs the file; returns its size in bytes.
    pub(crate) fn finish(self) -> io::Result<u64> {
        let (out, size) = self.seal()?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(size)
    }
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot of a state at `meta` whose store revision is `revision` and whose
    /// auth state is `auth`.
    pub(crate) fn new(out: W, meta: &SnapshotMeta, revision: u64, auth: &AuthState) -> io::Result<Self> {
        let mut w = SnapshotWriter {
            out,
            crc: crc32fast::Hasher::new(),
            count: 0,
            bytes: 0,
        };
        let meta = encode(meta)?;
        w.put(MAGIC)?;
        w.put(&(meta.len() as u32).to_le_bytes())?;
        w.put(&meta)?;
        w.put(&revision.to_le_bytes())?;
        let auth = auth.to_bytes()?;
        w.put(&(auth.len() as u32).to_le_bytes())?;
        w.put(&auth)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    pub(crate) fn record(&mut self, key: &[u8], revision: u64, value: &[u8]) -> io::Result<()> {
        self.put(&[TAG_RECORD])?;
        self.put(&(key.len() as u32).to_le_bytes())?;
        self.put(key)?;
        self.put(&revision.to_le_bytes())?;
        self.put(&(value.len() as u32).to_le_bytes())?;
        self.put(value)?;
        self.count += 1;
        Ok(())
    }

    /// Appends the end marker, record count and checksum; returns the writer (flushed) and
    /// the total size.
    pub(crate) fn seal(mut self) -> io::Result<(W, u64)> {
        self.put(&[TAG_END])?;
        let count = self.count;
        self.put(&count.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.flush()?;
        Ok((self.out, self.bytes + 4))
    }
}

/// Reads a snapshot file front to back, checking the checksum at the end.
pub struct SnapshotReader<R: Read> {
    input: R,
    crc: crc32fast::Hasher,
    count: u64,
    meta: SnapshotMeta,
    revision: u64,
    auth: AuthState,
    done: bool,
}

/// One key as stored in a snapshot.
pub struct Record {
    pub key: Vec<u8>,
    pub(crate) revision: u64,
    pub value: Vec<u8>,
}

impl SnapshotReader<BufReader<File>> {
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::new(BufReader::with_capacity(1 << 20, File::open(path)?))
    }
}

impl<R: Read> SnapshotReader<R> {
    fn new(input: R) -> io::Result<Self> {
        let mut r = SnapshotReader {
            input,
            crc: crc32fast::Hasher::new(),
            count: 0,
            meta: SnapshotMeta::default(),
            revision: 0,
            auth: AuthState::default(),
            done: false,
        };
        let mut magic = [0u8; 8];
        r.take(&mut magic)
            .map_err(|_| invalid("not a raftkv snapshot: file too short"))?;
        if &magic != MAGIC && &magic != MAGIC_V2 && &magic != MAGIC_V1 {
            return Err(invalid("not a raftkv snapshot: bad magic bytes"));
        }
        let len = r.u32()?;
        if len > MAX_FIELD {
            return Err(invalid("corrupt snapshot: metadata length out of range"));
        }
        let meta = r.bytes(len)?;
        r.meta = decode(&meta)?;
        r.revision = if &magic == MAGIC_V1 {
            r.meta.last_log_id.map_or(0, |l| l.index)
        } else {
            r.u64()?
        };
        if &magic == MAGIC {
            let len = r.u32()?;
            if len > MAX_FIELD {
                return Err(invalid("corrupt snapshot: auth state length out of range"));
            }
            let auth = r.bytes(len)?;
            r.auth = AuthState::from_bytes(&auth)?;
        }
        Ok(r)
    }

    pub(crate) fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// The store revision of the state this snapshot holds.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// The auth state (users, roles, permissions) of the state this snapshot holds.
    pub(crate) fn auth(&self) -> &AuthState {
        &self.auth
    }

    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.input.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                invalid("snapshot is truncated or corrupt: the data ends early")
            } else {
                e
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.take(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.take(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self, len: u32) -> io::Result<Vec<u8>> {
        let mut v = vec![0u8; len as usize];
        self.take(&mut v)?;
        Ok(v)
    }

    /// The next record, or `None` after the end marker once the checksum has been verified.
    pub fn next_record(&mut self) -> io::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.take(&mut tag)?;
        match tag[0] {
            TAG_RECORD => {
                let klen = self.u32()?;
                if klen > MAX_FIELD {
                    return Err(invalid("corrupt snapshot: key length out of range"));
                }
                let key = self.bytes(klen)?;
                let revision = self.u64()?;
                let vlen = self.u32()?;
                if vlen > MAX_FIELD {
                    return Err(invalid("corrupt snapshot: value length out of range"));
                }
                let value = self.bytes(vlen)?;
                self.count += 1;
                Ok(Some(Record { key, revision, value }))
            }
            TAG_END => {
                let count = self.u64()?;
                let expected = self.crc.clone().finalize();
                let mut b = [0u8; 4];
                self.input
                    .read_exact(&mut b)
                    .map_err(|_| invalid("snapshot is truncated: missing checksum"))?;
                if u32::from_le_bytes(b) != expected {
                    return Err(invalid("snapshot checksum mismatch: the file is corrupt"));
                }
                if count != self.count {
                    return Err(invalid("corrupt snapshot: record count mismatch"));
                }
                let mut extra = [0u8; 1];
                if self.input.read(&mut extra)? != 0 {
                    return Err(invalid("corrupt snapshot: trailing bytes after the checksum"));
                }
                self.done = true;
                Ok(None)
            }
            other => Err(invalid(format!("corrupt snapshot: unknown record tag {other}"))),
        }
    }

    /// Reads to the end, verifying the checksum; returns the number of records.
    pub(crate) fn verify(mut self) -> io::Result<u64> {
        while self.next_record()?.is_some() {}
        Ok(self.count)
    }
}
