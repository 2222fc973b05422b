//! Machines that fetched iPXE and never came back for their script. Under UEFI Secure Boot the
//! firmware downloads `ipxe.efi` (or `snponly.efi`), refuses to start it (unsigned) and moves
//! on to its next boot device: from the server it looks like a download and then silence. This
//! is the bookkeeping that makes it visible: a fetch is remembered by client address until
//! that address asks for a boot script (`/boot/<mac>.ipxe`, or a GRUB config); one left
//! unanswered past the window is reported once, logged with the hint and counted in
//! `/metrics`. Pure (time is passed in); the server calls [`NbpWatch::sweep`] on a timer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Addresses remembered at most (a LAN's worth); the oldest fetch is forgotten first.
pub const MAX_PENDING: usize = 1024;
/// How long after its iPXE download a machine must ask for its script. iPXE asks within
/// seconds (DHCP again, then HTTP); 2 minutes leaves room for slow links and TCG VMs.
pub const WINDOW_MS: u64 = 120_000;

/// The unsigned boot binaries whose silent refusal this watches for.
pub fn watched(name: &str) -> Option<&'static str> {
    match name.trim_start_matches('/') {
        "ipxe.efi" => Some("ipxe.efi"),
        "snponly.efi" => Some("snponly.efi"),
        _ => None,
    }
}

/// A machine that fetched `file` and did not ask for its script within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silent {
    pub client: IpAddr,
    pub file: &'static str,
    pub fetched_ms: u64,
}

#[derive(Default)]
pub struct NbpWatch {
    pending: Mutex<HashMap<IpAddr, (&'static str, u64)>>,
    /// Machines reported silent since start (`ironseed_pxe_nbp_no_script_total`).
    pub silent_total: AtomicU64,
}

impl NbpWatch {
    /// `client` fetched boot file `name` (TFTP or HTTP); only [`watched`] names count.
    pub fn fetched(&self, client: IpAddr, name: &str, now_ms: u64) {
        let Some(file) = watched(name) else {
            return;
        };
        let mut p = self.pending.lock().unwrap();
        if p.len() >= MAX_PENDING
            && !p.contains_key(&client)
            && let Some(oldest) = p.iter().min_by_key(|(_, (_, t))| *t).map(|(ip, _)| *ip)
        {
            p.remove(&oldest);
        }
        // The first unanswered fetch counts: firmware that retries its boot entries keeps
        // fetching, and must not push its own report out forever.
        p.entry(client).or_insert((file, now_ms));
    }

    /// `client` asked for its boot script: its fetch was not refused.
    pub fn script(&self, client: IpAddr, _now_ms: u64) {
        self.pending.lock().unwrap().remove(&client);
    }

    /// Fetches older than the window without a script, each reported once (and counted).
    pub fn sweep(&self, now_ms: u64) -> Vec<Silent> {
        let mut p = self.pending.lock().unwrap();
        let mut out: Vec<Silent> = p
            .iter()
            .filter(|(_, (_, t))| now_ms.saturating_sub(*t) >= WINDOW_MS)
            .map(|(ip, (file, t))| Silent {
                client: *ip,
                file,
                fetched_ms: *t,
            })
            .collect();
        for s in &out {
            p.remove(&s.client);
        }
        out.sort_by_key(|s| (s.fetched_ms, s.client));
        self.silent_total
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        out
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap().len()
    }

    /// The `/metrics` lines.
    pub fn render_metrics(&self, out: &mut String) {
        out.push_str(&format!(
            "# HELP ironseed_pxe_nbp_no_script_total Machines that fetched ipxe.efi/snponly.efi and never asked for their boot script (Secure Boot refusing unsigned iPXE?).\n\
             # TYPE ironseed_pxe_nbp_no_script_total counter\nironseed_pxe_nbp_no_script_total {}\n",
            self.silent_total.load(Ordering::Relaxed)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    #[test]
    fn a_fetch_without_a_script_is_reported_once_after_the_window() {
        let w = NbpWatch::default();
        w.fetched(ip(1), "ipxe.efi", 1000);
        w.fetched(ip(2), "/snponly.efi", 1000);
        w.fetched(ip(3), "ipxe.efi", 1000);
        w.fetched(ip(4), "shimx64.efi", 1000); // signed: not watched
        w.fetched(ip(4), "undionly.kpxe", 1000); // BIOS: no Secure Boot
        w.script(ip(2), 5000);
        w.fetched(ip(1), "ipxe.efi", 1000 + WINDOW_MS / 2); // a retry keeps the first time
        assert!(
            w.sweep(1000 + WINDOW_MS - 1).is_empty(),
            "inside the window"
        );
        let s = w.sweep(1000 + WINDOW_MS);
        assert_eq!(
            s,
            [
                Silent {
                    client: ip(1),
                    file: "ipxe.efi",
                    fetched_ms: 1000
                },
                Silent {
                    client: ip(3),
                    file: "ipxe.efi",
                    fetched_ms: 1000
                }
            ]
        );
        assert!(w.sweep(10 * WINDOW_MS).is_empty(), "reported once");
        let mut m = String::new();
        w.render_metrics(&mut m);
        assert!(m.contains("ironseed_pxe_nbp_no_script_total 2\n"), "{m}");
    }

    /// Protects memory: any host can send TFTP read requests from many addresses.
    #[test]
    fn pending_fetches_are_bounded_and_the_oldest_goes_first() {
        let w = NbpWatch::default();
        for n in 0..(MAX_PENDING as u32 + 10) {
            w.fetched(ip(n), "ipxe.efi", u64::from(n));
        }
        assert_eq!(w.pending(), MAX_PENDING);
        let s = w.sweep(u64::MAX);
        assert_eq!(s.len(), MAX_PENDING);
        assert_eq!(s[0].client, ip(10), "the 10 oldest were forgotten");
    }
}
