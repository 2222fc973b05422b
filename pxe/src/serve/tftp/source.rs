//! Read-ahead of the file bytes a transfer sends.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Body, Content};
use crate::proto::tftp::Negotiated;

/// File bytes for the data path. Content is read in `read_chunk`-sized reads
/// into one buffer that also keeps the unacknowledged window for resends, so
/// there is no allocation or read call per block, and a window is one slice.
pub(super) struct Source {
    pub(super) size: u64,
    kind: SourceKind,
}

enum SourceKind {
    Bytes(Arc<[u8]>),
    Buffered {
        input: Input,
        buf: Vec<u8>,
        /// File offset of `buf[0]`.
        start: u64,
        /// Valid bytes in `buf`.
        filled: usize,
    },
}

/// Where a buffered source reads from, on the transfer's blocking thread.
enum Input {
    /// pread(2) straight into the window buffer.
    File(std::fs::File),
    /// A provider's async reader, driven from the blocking thread.
    Reader(Box<dyn AsyncRead + Send + Unpin>, tokio::runtime::Handle),
}

impl Input {
    fn read(&mut self, offset: u64, dst: &mut [u8]) -> io::Result<usize> {
        match self {
            Input::File(f) => loop {
                match f.read_at(dst, offset) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => return r,
                }
            },
            // Sequential: offsets only grow, and the buffer logic asks for the
            // bytes right after the ones it has.
            Input::Reader(r, handle) => handle.block_on(r.read(dst)),
        }
    }
}

impl Source {
    pub(super) fn new(
        content: Content,
        neg: &Negotiated,
        read_chunk: usize,
        handle: tokio::runtime::Handle,
    ) -> Self {
        let input = match content.body {
            Body::Bytes(b) => {
                return Source {
                    size: content.size,
                    kind: SourceKind::Bytes(b),
                };
            }
            Body::File(f) => Input::File(f),
            Body::Reader(r) => Input::Reader(r, handle),
        };
        let window_bytes = neg.blksize as usize * neg.windowsize as usize;
        // At least 8 blocks per read: with 64 KiB blocks a 256 KiB chunk
        // would mean a read call every 4 packets.
        let read_chunk = read_chunk.max(8 * neg.blksize as usize);
        // Never more than the file needs (+1 so EOF-sized buffers stay
        // non-empty): small files cost small buffers.
        let cap = (read_chunk + window_bytes).min(content.size as usize + 1);
        Source {
            size: content.size,
            kind: SourceKind::Buffered {
                input,
                buf: vec![0u8; cap.max(1)],
                start: 0,
                filled: 0,
            },
        }
    }

    /// Have `offset..offset + len` read ahead of need, when it fits in the buffer
    /// beside the unacknowledged bytes from `keep_from` (two windows of 64 KiB
    /// blocks do not); read errors are left for [`Source::range`] to report.
    pub(super) fn prefetch(&mut self, offset: u64, len: usize, keep_from: u64) {
        let SourceKind::Buffered { buf, .. } = &self.kind else {
            return;
        };
        if (offset + len as u64).saturating_sub(keep_from) <= buf.len() as u64 {
            let _ = self.range(offset, len, keep_from);
        }
    }

    /// Bytes `offset..offset + len` (at most one window). `keep_from` (≤ offset)
    /// is the start of the unacknowledged window: bytes before it may be
    /// discarded.
    pub(super) fn range(&mut self, offset: u64, len: usize, keep_from: u64) -> io::Result<&[u8]> {
        match &mut self.kind {
            SourceKind::Bytes(b) => {
                let start = offset as usize;
                b.get(start..start + len)
                    .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short content"))
            }
            SourceKind::Buffered {
                input,
                buf,
                start,
                filled,
            } => {
                let end = offset + len as u64;
                if offset < *start {
                    // Cannot happen while keep_from only grows; guard anyway.
                    return Err(io::Error::other("block before buffered window"));
                }
                if end > *start + *filled as u64 {
                    // Drop what is acknowledged, then read one big chunk.
                    let drop = (keep_from.saturating_sub(*start) as usize).min(*filled);
                    buf.copy_within(drop..*filled, 0);
                    *filled -= drop;
                    *start += drop as u64;
                    let need = (end - *start) as usize;
                    if need > buf.len() {
                        return Err(io::Error::other("range larger than the window buffer"));
                    }
                    // Never read past the announced size: a growing file must
                    // not push bytes of the next block into this one's tail.
                    let want = (buf.len() as u64).min(self.size - *start) as usize;
                    while *filled < need {
                        let at = *start + *filled as u64;
                        let n = input.read(at, &mut buf[*filled..want])?;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "content shorter than its announced size",
                            ));
                        }
                        *filled += n;
                    }
                }
                let from = (offset - *start) as usize;
                Ok(&buf[from..from + len])
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use tokio::io::AsyncRead;

    use super::*;

    fn neg(blksize: u16, windowsize: u16) -> Negotiated {
        Negotiated {
            blksize,
            windowsize,
            timeout_secs: None,
            oack: vec![],
        }
    }

    /// Reads blocks as the send loop does, re-reading the start of the
    /// unacknowledged window as a resend would, and a whole window at once.
    fn check_source(mut src: Source, data: &[u8]) {
        let size = data.len() as u64;
        let mut acked = 0u64;
        let mut offset = 0u64;
        while offset < size {
            let len = (size - offset).min(100) as usize;
            let got = src.range(offset, len, acked).unwrap().to_vec();
            assert_eq!(got, data[offset as usize..offset as usize + len]);
            let again = src.range(acked, 100, acked).unwrap().to_vec();
            assert_eq!(again, data[acked as usize..acked as usize + 100]);
            let window = src.range(acked, 400.min((size - acked) as usize), acked);
            assert_eq!(
                window.unwrap(),
                &data[acked as usize..(acked + 400).min(size) as usize]
            );
            offset += 100;
            if offset.is_multiple_of(400) {
                acked = offset - 100;
            }
        }
    }

    #[test]
    fn source_reads_sequentially_and_resends_window() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        // Tiny chunk so the buffer is refilled and compacted many times.
        let reader = Content::from_reader(10_000, std::io::Cursor::new(data.clone()));
        check_source(
            Source::new(reader, &neg(100, 4), 150, rt.handle().clone()),
            &data,
        );
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        // A file longer than announced: only the announced bytes are read.
        std::io::Write::write_all(&mut file, b"tail").unwrap();
        let file = Content::from_file(10_000, file);
        check_source(
            Source::new(file, &neg(100, 4), 150, rt.handle().clone()),
            &data,
        );
    }

    /// A reader that counts its reads.
    struct Counted(std::io::Cursor<Vec<u8>>, Arc<AtomicU64>);

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    #[test]
    fn the_next_window_is_read_before_its_ack_when_it_fits() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let reads = Arc::new(AtomicU64::new(0));
        let reader = Counted(std::io::Cursor::new(data.clone()), reads.clone());
        let content = Content::from_reader(10_000, reader);
        // Windows of 4 x 100 bytes; reads of at least 8 blocks: a 1200-byte
        // buffer, filled by the first read.
        let mut src = Source::new(content, &neg(100, 4), 150, rt.handle().clone());
        assert_eq!(src.range(0, 400, 0).unwrap(), &data[..400]);
        let before = reads.load(Ordering::Relaxed);
        // Window 4 while window 1 is unacknowledged: 1600 bytes do not fit.
        src.prefetch(1200, 400, 0);
        assert_eq!(
            reads.load(Ordering::Relaxed),
            before,
            "read what cannot fit"
        );
        // Window 4 while window 3 is unacknowledged fits: read now, and both
        // window 3's retransmission and window 4 after the ACK are served from
        // the buffer.
        src.prefetch(1200, 400, 800);
        let after_prefetch = reads.load(Ordering::Relaxed);
        assert!(after_prefetch > before);
        assert_eq!(src.range(800, 400, 800).unwrap(), &data[800..1200]);
        assert_eq!(src.range(1200, 400, 1200).unwrap(), &data[1200..1600]);
        assert_eq!(reads.load(Ordering::Relaxed), after_prefetch);
    }

    #[test]
    fn source_reports_short_content() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let content = Content::from_reader(1000, std::io::Cursor::new(vec![1u8; 600]));
        let mut src = Source::new(content, &neg(512, 1), 4096, rt.handle().clone());
        assert!(src.range(0, 512, 0).is_ok());
        let err = src.range(512, 488, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &[1u8; 600]).unwrap();
        let content = Content::from_file(1000, file);
        let mut src = Source::new(content, &neg(512, 1), 4096, rt.handle().clone());
        assert!(src.range(0, 512, 0).is_ok());
        let err = src.range(512, 488, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
