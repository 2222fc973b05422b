//! Wake-on-LAN: the AMD "Magic Packet" (6 × 0xFF, then the target MAC 16 times) as a UDP
//! broadcast to the discard port. It can only power on, and it cannot say whether it worked: the
//! NIC listens only while the machine is off with standby power (OptiPlex: Deep Sleep Control
//! off), so `provision` confirms by waiting for the node's own network boot.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use super::{PowerDriver, PowerError, PowerState, PxeOnce};

pub const WOL_PORT: u16 = 9;

/// The 102-byte magic packet for `mac`.
pub fn magic_packet(mac: [u8; 6]) -> [u8; 102] {
    let mut p = [0xFF; 102];
    for chunk in p[6..].chunks_exact_mut(6) {
        chunk.copy_from_slice(&mac);
    }
    p
}

pub struct Wol {
    pub mac: [u8; 6],
    pub broadcast: Ipv4Addr,
    pub interface: Option<String>,
}

impl Wol {
    fn send(&self) -> Result<(), PowerError> {
        let fail =
            |what: &str, e: std::io::Error| PowerError::Failed(format!("wake-on-LAN {what}: {e}"));
        let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| fail("socket", e))?;
        sock.set_broadcast(true)
            .map_err(|e| fail("SO_BROADCAST", e))?;
        if let Some(ifname) = &self.interface {
            let name = std::ffi::OsString::from(ifname);
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::BindToDevice, &name)
                .map_err(|e| fail(&format!("bind to {ifname}"), e.into()))?;
        }
        let pkt = magic_packet(self.mac);
        // Three copies: a single UDP datagram on a busy switch port is easily lost, and a
        // woken machine ignores the rest.
        for _ in 0..3 {
            sock.send_to(&pkt, SocketAddrV4::new(self.broadcast, WOL_PORT))
                .map_err(|e| fail(&format!("send to {}", self.broadcast), e))?;
        }
        Ok(())
    }
}

impl PowerDriver for Wol {
    fn name(&self) -> &'static str {
        "wol"
    }
    fn status(&mut self) -> Result<PowerState, PowerError> {
        Err(PowerError::Unsupported {
            driver: "wake-on-LAN",
            action: "read the power state",
        })
    }
    fn on(&mut self) -> Result<(), PowerError> {
        self.send()
    }
    fn off(&mut self) -> Result<(), PowerError> {
        Err(PowerError::Unsupported {
            driver: "wake-on-LAN",
            action: "power off (shut the machine down from its OS)",
        })
    }
    fn cycle(&mut self) -> Result<(), PowerError> {
        Err(PowerError::Unsupported {
            driver: "wake-on-LAN",
            action: "power cycle (reboot the machine from its OS)",
        })
    }
    fn pxe_once(&mut self) -> Result<PxeOnce, PowerError> {
        Ok(PxeOnce::Firmware(
            "a woken OptiPlex network-boots when its BIOS has Wake on LAN set to \"LAN with PXE Boot\"",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_packet_is_six_ff_then_sixteen_macs() {
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        let p = magic_packet(mac);
        assert_eq!(p.len(), 102);
        assert_eq!(&p[..6], &[0xFF; 6]);
        for i in 0..16 {
            assert_eq!(&p[6 + 6 * i..12 + 6 * i], &mac, "copy {i}");
        }
    }
}
