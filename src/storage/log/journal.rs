//! The write-ahead journal of the Raft log: where appended entries are made durable until the
//! next checkpoint writes them into redb.
//!
//! A redb commit rewrites every page on the path to what it changed (the log's leaf and
//! branches, the table tree, the freed-page tree, the header): about eight scattered 4 KiB
//! pages for one appended entry, and an fsync's cost grows with the pages it must write, the
//! more so when other processes flush the same disk. The journal makes an append one
//! sequential write of the entries themselves; the log store checkpoints them into redb in
//! batches, many entries to one commit (the first benchmark with the journal:
//! `bench/results/2026-12-02T110412Z.md`).
//!
//! The file is a run of records written from offset 0:
//!
//! ```text
//! u32 payload length | u32 crc32 (of generation, length, payload) | u64 generation | payload
//! ```
//!
//! Every checkpoint (and every open) moves the log database to a new generation, saved in the
//! same redb commit, and the journal starts again at offset 0 with records of that
//! generation. Recovery reads records of the saved generation from the start and stops at the
//! first that is torn, corrupt or older: nothing after such a record was ever acknowledged,
//! since an append is acknowledged only after the fsync that covers it and everything before.
//! The file is overwritten in place and never shrinks, so an fsync rarely has file metadata
//! to write.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const HEADER: usize = 16;
/// Larger payloads than this are not records (a torn length field, not a real entry).
const MAX_PAYLOAD: usize = 256 << 20;

pub(super) struct Journal {
    file: File,
    generation: u64,
    /// Where the next record goes.
    end: u64,
    /// The records of one append, kept between appends so that each does not allocate.
    buf: Vec<u8>,
}

impl Journal {
    /// Opens (or creates) the journal at `path` for records of `generation`, written from
    /// the start of the file.
    pub(super) fn open(path: &Path, generation: u64) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // The file's name must outlive a crash as surely as the records in it.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(Journal {
            file,
            generation,
            end: 0,
            buf: Vec::new(),
        })
    }

    /// The payloads of the records of `generation` at the start of the file at `path`, in
    /// order; none if there is no file.
    pub(super) fn recover(path: &Path, generation: u64) -> io::Result<Vec<Vec<u8>>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((payload, next)) = record_at(&bytes, at, generation) {
            out.push(payload.to_vec());
            at = next;
        }
        Ok(out)
    }

    /// Appends one record per payload in one write, and fsyncs: when this returns they are
    /// durable.
    pub(super) fn append(&mut self, payloads: &[&[u8]]) -> io::Result<()> {
        let size: usize = payloads.iter().map(|p| HEADER + p.len()).sum();
        let buf = &mut self.buf;
        buf.clear();
        buf.reserve(size);
        for payload in payloads {
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|&l| l as usize <= MAX_PAYLOAD)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "journal record too large"))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&checksum(self.generation, len, payload).to_le_bytes());
            buf.extend_from_slice(&self.generation.to_le_bytes());
            buf.extend_from_slice(payload);
        }
        self.file.write_all_at(buf, self.end)?;
        self.file.sync_data()?;
        self.end += size as u64;
        Ok(())
    }

    /// Starts over at offset 0 with records of `generation`, once everything journaled is in
    /// redb under it.
    pub(super) fn restart(&mut self, generation: u64) {
        self.generation = generation;
        self.end = 0;
    }

    /// Bytes of records written since the last restart.
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.end
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.end == 0
    }
}

/// The record of `generation` at `at`, and where the next one starts.
fn record_at(bytes: &[u8], at: usize, generation: u64) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let found = u64::from_le_bytes(header[8..16].try_into().ok()?);
    if found != generation || len as usize > MAX_PAYLOAD {
        return None;
    }
    let payload = bytes.get(at + HEADER..at + HEADER + len as usize)?;
    (checksum(generation, len, payload) == crc).then_some((payload, at + HEADER + len as usize))
}

/// A record's crc32: of its generation, length and payload.
fn checksum(generation: u64, len: u32, payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&generation.to_le_bytes());
    crc.update(&len.to_le_bytes());
    crc.update(payload);
    crc.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(n: usize, tag: u8) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![tag; 10 + i * 7]).collect()
    }

    /// A new journal of `generation` in a directory of its own (kept while the test runs).
    fn fresh(generation: u64) -> (tempfile::TempDir, std::path::PathBuf, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::open(&path, generation).unwrap();
        (dir, path, j)
    }

    fn append(j: &mut Journal, payloads: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        j.append(&refs).unwrap();
    }

    #[test]
    fn records_of_the_generation_come_back_in_order() {
        let (dir, path, mut j) = fresh(7);
        append(&mut j, &payloads(3, 1));
        append(&mut j, &payloads(2, 2));
        let mut want = payloads(3, 1);
        want.extend(payloads(2, 2));
        assert_eq!(Journal::recover(&path, 7).unwrap(), want);
        assert!(
            Journal::recover(&path, 8).unwrap().is_empty(),
            "another generation's records are not this one's"
        );
        assert!(Journal::recover(&dir.path().join("none"), 7).unwrap().is_empty());
    }

    #[test]
    fn a_restart_hides_the_older_records_behind_the_newer() {
        let (_dir, path, mut j) = fresh(1);
        append(&mut j, &payloads(20, 1));
        j.restart(2);
        assert!(j.is_empty());
        append(&mut j, &payloads(2, 9));
        // The first generation's records still fill the file after the new ones.
        assert!(std::fs::metadata(&path).unwrap().len() > j.len());
        assert_eq!(Journal::recover(&path, 2).unwrap(), payloads(2, 9));
    }

    #[test]
    fn recovery_stops_at_a_torn_or_corrupt_record() {
        let (_dir, path, mut j) = fresh(3);
        append(&mut j, &payloads(4, 5));
        let full = std::fs::read(&path).unwrap();
        let sizes: Vec<usize> = payloads(4, 5).iter().map(|p| HEADER + p.len()).collect();
        let third = sizes[0] + sizes[1];

        // Torn inside the third record: the first two survive.
        std::fs::write(&path, &full[..third + 5]).unwrap();
        assert_eq!(Journal::recover(&path, 3).unwrap(), payloads(2, 5));

        // A flipped byte in the third record's payload: the same.
        let mut bad = full.clone();
        bad[third + HEADER + 1] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(Journal::recover(&path, 3).unwrap(), payloads(2, 5));

        // A length field gone wild does not read past the file or allocate it.
        let mut bad = full;
        bad[third..third + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(Journal::recover(&path, 3).unwrap(), payloads(2, 5));
    }
}
