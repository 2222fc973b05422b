//! Sending a window of TFTP DATA packets in as few syscalls as the kernel allows: UDP GSO,
//! else `sendmmsg`.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg, sendmsg,
};
use tracing::debug;

use crate::proto::tftp::{DATA_HEADER_LEN, block_number, write_data_header};

/// Most DATA packets handed to the kernel in one `sendmmsg` call.
const MAX_BATCH: usize = 64;

/// Largest UDP payload handed to the kernel in one GSO send (IPv4 allows 65507).
const GSO_MAX_BYTES: usize = 65_000;
/// Segments per GSO send (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels).
const GSO_MAX_SEGS: usize = 64;

/// Sends DATA packets for one transfer. Each packet is two iovecs, header and a
/// slice of the read buffer, so payload is never copied in user space. A window
/// goes out as UDP GSO (`UDP_SEGMENT`: one sendmsg, one pass through the stack,
/// the kernel cuts it into `4 + blksize` datagrams, which works because every
/// block but a file's last is full) or, where GSO is refused, one `sendmmsg`
/// instead of one syscall per block. Built on the transfer's own thread
/// (`MultiHeaders` is not `Send`).
pub(crate) struct Sender {
    fd: std::os::fd::RawFd,
    peer: SockaddrStorage,
    mmsg: MultiHeaders<SockaddrStorage>,
    addrs: Vec<Option<SockaddrStorage>>,
    gso: bool,
}

impl Sender {
    pub(crate) fn new(sock: &std::net::UdpSocket, peer: SocketAddr) -> Self {
        let peer = SockaddrStorage::from(peer);
        Sender {
            fd: sock.as_raw_fd(),
            peer,
            mmsg: MultiHeaders::preallocate(MAX_BATCH, None),
            addrs: vec![Some(peer); MAX_BATCH],
            gso: true,
        }
    }

    /// Sends blocks `first..first + count`, whose payloads are consecutive
    /// `blksize` slices of `data` (the last may be shorter or empty).
    pub(crate) fn send(
        &mut self,
        first: u64,
        count: usize,
        data: &[u8],
        blksize: usize,
    ) -> io::Result<()> {
        let seg = DATA_HEADER_LEN + blksize;
        let mut done = 0;
        while done < count {
            let rest = &data[(done * blksize).min(data.len())..];
            let seq = first + done as u64;
            let left = count - done;
            let gso_segs = left.min(GSO_MAX_SEGS).min(GSO_MAX_BYTES / seg);
            let sent = if left == 1 {
                self.send_gso_or_one(seq, 1, rest, blksize)
            } else if self.gso && gso_segs >= 2 {
                match self.send_gso_or_one(seq, gso_segs, rest, blksize) {
                    // Kernels or routes without UDP GSO: sendmmsg from now on.
                    Err(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => {
                        debug!("tftp: UDP GSO refused, sending windows with sendmmsg");
                        self.gso = false;
                        continue;
                    }
                    r => r,
                }
            } else {
                self.send_mmsg(seq, left.min(MAX_BATCH), rest, blksize)
            };
            match sent {
                // A blocking send only returns early if interrupted; resume.
                Ok(n) => done += n.max(1),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// `n` blocks in one sendmsg: with `n > 1` as GSO segments.
    fn send_gso_or_one(
        &mut self,
        first: u64,
        n: usize,
        data: &[u8],
        blksize: usize,
    ) -> nix::Result<usize> {
        let mut headers = [[0u8; DATA_HEADER_LEN]; GSO_MAX_SEGS];
        let mut iovs = [IoSlice::new(&[]); 2 * GSO_MAX_SEGS];
        for (i, h) in headers[..n].iter_mut().enumerate() {
            write_data_header(h, block_number(first + i as u64));
        }
        for (i, (iov, h)) in iovs.chunks_exact_mut(2).zip(&headers[..n]).enumerate() {
            let from = (i * blksize).min(data.len());
            let to = (from + blksize).min(data.len());
            iov[0] = IoSlice::new(h);
            iov[1] = IoSlice::new(&data[from..to]);
        }
        let seg = (DATA_HEADER_LEN + blksize) as u16;
        let gso = [ControlMessage::UdpGsoSegments(&seg)];
        let cmsgs: &[ControlMessage] = if n > 1 { &gso } else { &[] };
        sendmsg(
            self.fd,
            &iovs[..2 * n],
            cmsgs,
            MsgFlags::empty(),
            Some(&self.peer),
        )?;
        Ok(n)
    }

    /// Up to [`MAX_BATCH`] blocks in one sendmmsg; returns how many were sent.
    fn send_mmsg(
        &mut self,
        first: u64,
        n: usize,
        data: &[u8],
        blksize: usize,
    ) -> nix::Result<usize> {
        let mut headers = [[0u8; DATA_HEADER_LEN]; MAX_BATCH];
        for (i, h) in headers[..n].iter_mut().enumerate() {
            write_data_header(h, block_number(first + i as u64));
        }
        let mut iovs = [[IoSlice::new(&[]); 2]; MAX_BATCH];
        for (i, iov) in iovs[..n].iter_mut().enumerate() {
            let from = (i * blksize).min(data.len());
            let to = (from + blksize).min(data.len());
            *iov = [IoSlice::new(&headers[i]), IoSlice::new(&data[from..to])];
        }
        let r = sendmmsg(
            self.fd,
            &mut self.mmsg,
            iovs[..n].iter(),
            &self.addrs[..n],
            [],
            MsgFlags::empty(),
        )?;
        Ok(r.count())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::tftp::{Packet, encode};

    /// Both send paths (GSO and its sendmmsg fallback) put the same datagrams on
    /// the wire: full blocks, a short last one, numbers across the rollover.
    #[test]
    fn sender_gso_and_sendmmsg_send_the_same_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let data: Vec<u8> = (0..(100 * 70 + 33)).map(|i| (i % 253) as u8).collect();
        let count = 71; // 70 full blocks of 100 and one of 33: more than one batch
        for gso in [true, false] {
            let mut sender = Sender::new(&tx, rx.local_addr().unwrap());
            sender.gso = gso;
            sender.send(65_500, count, &data, 100).unwrap();
            let mut buf = [0u8; 256];
            for i in 0..count {
                let n = rx.recv(&mut buf).unwrap();
                let seq = 65_500 + i as u64;
                let from = i * 100;
                let to = (from + 100).min(data.len());
                let want = encode(&Packet::Data {
                    block: block_number(seq),
                    data: data[from..to].to_vec(),
                });
                assert_eq!(&buf[..n], &want[..], "gso={gso} block {seq}");
            }
        }
    }
}
