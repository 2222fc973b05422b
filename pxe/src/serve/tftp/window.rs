//! The pure half of the data path: the RFC 7440 sender window, the retransmission
//! backoff, and when a transfer may poll for ACKs.

use std::time::Duration;

use crate::proto::tftp::ack_to_seq;

/// How long a transfer polls for the next ACK before it sleeps in recvfrom.
///
/// A sleeping transfer thread costs a cross-CPU wake-up per window, tens of
/// microseconds on a virtualised host: as long as a fast client takes to read a
/// whole 16-block window. Polling saves that wake-up but burns the CPU while it
/// waits, so a transfer polls only while its client's ACKs have come back within
/// the budget (a slow client or a long path never makes it spin), and the caller
/// polls only with a core to spare (it never takes a core another transfer could
/// use). Measured: atftp windowsize 16 on loopback went from 1.1x to 1.3x
/// atftpd with polling alone, lock-step tftp-hpa from 1.0x to 2.9x tftpd-hpa
/// (pxe/bench/tftp.sh).
pub fn ack_poll_budget(max: Duration, ack_latency: Option<Duration>) -> Duration {
    match ack_latency {
        Some(rtt) if rtt <= max => max,
        _ => Duration::ZERO,
    }
}

/// Exponentially weighted moving average, 1/8 weight for the new sample (the
/// smoothing RFC 6298 uses for TCP's SRTT).
pub(super) fn smooth(avg: Option<Duration>, sample: Duration) -> Duration {
    match avg {
        None => sample,
        Some(a) => (a * 7 + sample) / 8,
    }
}

/// Wait before the `retries`-th retransmission of the same packet: the timeout,
/// doubled per consecutive retry up to 16× (RFC 1123 4.2.3.2 requires an
/// adaptive timeout with exponential backoff). Besides sparing a congested link,
/// this lets a client's own retransmission timer fire: atftp restarts its timer on
/// every packet, even an ignored duplicate, so a server resending faster than the
/// client's timeout would keep it from ever re-sending a lost ACK.
pub fn backoff(timeout: Duration, retries: u32) -> Duration {
    timeout.saturating_mul(1 << retries.min(4))
}

/// RFC 7440 sender window, without I/O. Blocks are numbered by a 64-bit sequence
/// starting at 1; only the wire format wraps at 65536.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Highest block acknowledged (0: none yet).
    pub acked: u64,
    /// Highest block sent since the last rewind.
    pub sent: u64,
    /// Sequence number of the final (short) block.
    pub last: u64,
    pub size: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The final block is acknowledged.
    Done,
    /// The window moved; send what [`Window::to_send`] says next.
    Advanced,
    /// Duplicate, stale or bogus ACK: send nothing (no Sorcerer's Apprentice).
    Ignored,
}

impl Window {
    pub fn new(last: u64, size: u16) -> Self {
        Window {
            acked: 0,
            sent: 0,
            last,
            size: size.max(1),
        }
    }

    /// Blocks to send now: after the last sent one, up to one window past the
    /// last acknowledged one.
    pub fn to_send(&self) -> std::ops::RangeInclusive<u64> {
        let end = (self.acked + self.size as u64).min(self.last);
        self.sent + 1..=end
    }

    pub fn on_ack(&mut self, block: u16) -> AckOutcome {
        match ack_to_seq(block, self.acked, self.sent) {
            None => AckOutcome::Ignored,
            Some(seq) if seq == self.last => {
                self.acked = seq;
                AckOutcome::Done
            }
            Some(seq) => {
                self.acked = seq;
                // RFC 7440 section 4: an ACK inside the window means the client
                // lost the block after it; continue from there.
                if seq < self.sent {
                    self.sent = seq;
                }
                AckOutcome::Advanced
            }
        }
    }

    /// After a timeout, the whole unacknowledged window is sent again.
    pub fn on_timeout(&mut self) {
        self.sent = self.acked;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::tftp::block_number;

    #[test]
    fn acks_are_polled_for_only_from_a_fast_client() {
        let max = Duration::from_micros(200);
        let fast = Some(Duration::from_micros(60));
        assert_eq!(ack_poll_budget(max, fast), max);
        assert_eq!(ack_poll_budget(max, Some(max)), max);
        // The first window (nothing measured yet) and a slow client sleep.
        assert_eq!(ack_poll_budget(max, None), Duration::ZERO);
        let slow = Some(Duration::from_micros(201));
        assert_eq!(ack_poll_budget(max, slow), Duration::ZERO);
        // Turned off.
        assert_eq!(ack_poll_budget(Duration::ZERO, fast), Duration::ZERO);
    }

    #[test]
    fn ack_latency_is_smoothed_like_tcp_srtt() {
        let us = Duration::from_micros;
        assert_eq!(smooth(None, us(80)), us(80));
        assert_eq!(smooth(Some(us(80)), us(160)), us(90));
        // One slow ACK moves the average by an eighth, not to the outlier.
        let mut avg = Some(us(50));
        avg = Some(smooth(avg, us(10_050)));
        assert_eq!(avg, Some(us(1_300)));
    }

    #[test]
    fn backoff_doubles_up_to_16x() {
        let t = Duration::from_millis(100);
        let got: Vec<u64> = (0..7).map(|r| backoff(t, r).as_millis() as u64).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1600, 1600, 1600]);
        assert_eq!(
            backoff(Duration::from_secs(255), 9),
            Duration::from_secs(4080)
        );
    }

    #[test]
    fn window_lock_step() {
        let mut w = Window::new(3, 1);
        assert_eq!(w.to_send(), 1..=1);
        w.sent = 1;
        assert_eq!(w.on_ack(0), AckOutcome::Ignored, "OACK ack is stale");
        assert_eq!(w.on_ack(1), AckOutcome::Advanced);
        assert_eq!(w.to_send(), 2..=2);
        w.sent = 2;
        // Duplicate ACK 1 (the client retransmitted): must not trigger a resend.
        assert_eq!(w.on_ack(1), AckOutcome::Ignored);
        assert_eq!(w.on_ack(2), AckOutcome::Advanced);
        w.sent = 3;
        assert_eq!(w.on_ack(3), AckOutcome::Done);
    }

    #[test]
    fn window_partial_ack_rewinds() {
        let mut w = Window::new(100, 16);
        assert_eq!(w.to_send(), 1..=16);
        w.sent = 16;
        // Client got 1..=5, lost 6: resend from 6, window now ends at 21.
        assert_eq!(w.on_ack(5), AckOutcome::Advanced);
        assert_eq!(w.to_send(), 6..=21);
        w.sent = 21;
        // A late duplicate of ACK 5 changes nothing.
        assert_eq!(w.on_ack(5), AckOutcome::Ignored);
        assert_eq!(w.on_ack(21), AckOutcome::Advanced);
        assert_eq!(w.to_send(), 22..=37);
        w.sent = 37;
        w.on_timeout();
        assert_eq!(w.to_send(), 22..=37);
        // Never past the last block.
        let mut w = Window::new(3, 16);
        assert_eq!(w.to_send(), 1..=3);
        w.sent = 3;
        assert_eq!(w.on_ack(3), AckOutcome::Done);
    }

    #[test]
    fn window_across_rollover() {
        let mut w = Window::new(70_000, 8);
        w.acked = 65_530;
        w.sent = 65_538;
        assert_eq!(w.on_ack(block_number(65_536)), AckOutcome::Advanced);
        assert_eq!(w.acked, 65_536);
        assert_eq!(w.to_send(), 65_537..=65_544);
    }
}
