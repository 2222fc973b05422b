//! The Secure Boot network chain: firmware → Debian's signed shim → Debian's signed network
//! GRUB → Debian's signed installer kernel. Every name here is baked into the signed binaries
//! (read from bookworm's shim-signed 1.51~1+deb12u1+16.1 and grub-efi-amd64-signed
//! 2.06-13+deb12u2), so the server serves exactly these:
//!
//! - **shim** netboots its `DEFAULT_LOADER`, `\grubx64.efi`: the folder of the DHCP boot file
//!   plus `grubx64.efi`, from the same TFTP server (siaddr; the ProxyDHCP offer when there is
//!   one), or the same URL folder under UEFI HTTP boot (shim's `netboot.c`, `httpboot.c`).
//! - **grubnetx64.efi.signed** carries the prefix `/grub` (its PREFIX module object) on the
//!   device it came from, `(tftp,SERVER)`, and the embedded config `normal (memdisk)/grub.cfg`;
//!   that memdisk `grub.cfg` sources `$prefix/x86_64-efi/grub.cfg` if it exists, else
//!   `$prefix/grub.cfg`. Because `normal` is given a file, GRUB's own search for
//!   `grub.cfg-01-<mac>`, `grub.cfg-<IP in hex>`… (done only by `normal` without argument on a
//!   tftp prefix) never runs: [`GRUB_CFG`] sources the per-MAC file itself, with
//!   `$net_default_mac` (the booting NIC, lower case with colons).
//! - The signed image has no `http` module built in, and GRUB under shim lock loads no module
//!   from the network: the kernel and initrd come over TFTP ([`INSTALLER_FILES`]).
//!
//! What a node is told is the same install-once decision as its iPXE script
//! ([`crate::boot_policy::choose`]), as a GRUB config ([`grub_config`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::boot_policy::Script;
use crate::content::{BoxFuture, Content, Provider, ProviderError, relative_path};

/// The boot file DHCP hands a Secure Boot node (arch 7, 9; and 16 as a URL).
pub const SHIM: &str = "shimx64.efi";
/// The second stage shim fetches next to itself (shim's `DEFAULT_LOADER`).
pub const GRUB: &str = "grubx64.efi";
/// Where Debian's packages put the signed binaries (the defaults of `--shim` and `--grub`).
pub const SHIM_PATH: &str = "/usr/lib/shim/shimx64.efi.signed";
pub const GRUB_PATH: &str = "/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed";

/// `$prefix/grub.cfg`: the same for every machine; hands over to the per-MAC config. If that
/// is missing (never for a well-formed MAC: pxe always answers one), the next boot device.
pub const GRUB_CFG: &str = "\
# ironseed: read by Debian's signed network GRUB as (tftp,SERVER)/grub/grub.cfg
set timeout=0
source /grub/node/${net_default_mac}.cfg
echo \"ironseed: no boot config for ${net_default_mac}; trying the next boot device\"
sleep 5
exit 1
";

/// The installer files GRUB reads over TFTP, from `<artifacts>/installer/`: these names only.
pub const INSTALLER_FILES: [&str; 2] = ["vmlinuz", "initrd.img"];

/// What [`grub_config`] needs to write an install config.
#[derive(Debug, Clone, Copy)]
pub struct InstallBoot<'a> {
    /// The bundle's appliance URL (`http://10.0.20.5:8080`), as in the iPXE script.
    pub appliance_url: &'a str,
    pub hostname: &'a str,
    pub kernel_args: &'a [String],
    /// The node's live install secret: it exists only in this answer.
    pub secret: &'a str,
}

/// The GRUB config of `/grub/node/<mac>.cfg` for a decision: the installer with the node's
/// plan URL (the same kernel command line as `install.ipxe.j2`), or the next boot device.
/// `install` must be `Some` for [`Script::Install`]; without it the answer is local boot.
pub fn grub_config(script: Script, install: Option<InstallBoot<'_>>) -> String {
    match (script, install) {
        (Script::Install, Some(i)) => {
            let mut args = vec![
                "console=tty0".to_string(),
                "console=ttyS0,115200".to_string(),
                format!(
                    "ironseed.plan={}{}",
                    i.appliance_url,
                    images::bundle::paths::plan(i.hostname, i.secret)
                ),
            ];
            args.extend(i.kernel_args.iter().cloned());
            let args: Vec<String> = args.iter().map(|a| grub_quote(a)).collect();
            format!(
                "# ironseed: install {host}; served only while it is armed\n\
                 echo {msg}\n\
                 linux /installer/vmlinuz {args} ironseed.mac=${{net_default_mac}}\n\
                 initrd /installer/initrd.img\n\
                 boot\n\
                 echo 'ironseed: could not boot the installer; trying the next boot device'\n\
                 sleep 10\n\
                 exit 1\n",
                host = i.hostname,
                msg = grub_quote(&format!(
                    "ironseed: installing {} from {}",
                    i.hostname, i.appliance_url
                )),
                args = args.join(" "),
            )
        }
        // Local boot: chainload the installed disk's shim (Microsoft-signed, so shim's
        // verifier and the firmware's LoadImage both accept it; shim supports being started
        // by another shim's GRUB). `set root` first: GRUB 2.06's chainloader gives the image
        // the device path of `$root`, not of the file, and the disk's shim looks for its GRUB
        // on that device (with the network's, "Failed to find fs: Unsupported"). Not `exit`: Debian's GRUB 2.06 exits with EFI_SUCCESS
        // whatever its argument, shim passes that on, and EDK2's BDS answers a successful
        // boot option with its boot menu instead of the next entry (seen on OVMF).
        (Script::Install | Script::Local, _) => format!(
            "# ironseed: installed; boot the local disk\n\
             echo 'ironseed: booting from local disk'\n\
             search --no-floppy --fs-uuid --set=esp {esp}\n\
             if [ -n \"$esp\" ]; then\n\
             \x20 set root=$esp\n\
             \x20 chainloader {LOCAL_SHIM}\n\
             \x20 boot\n\
             fi\n\
             echo 'ironseed: cannot boot {LOCAL_SHIM} of an ironseed ESP ({esp}); trying the next boot device'\n\
             sleep 5\n\
             exit 1\n",
            esp = esp_fs_uuid(),
        ),
        (Script::Unknown, _) => "# ironseed: not in the inventory; nothing is installed\n\
             echo 'ironseed: this MAC is not in the inventory; not installing'\n\
             sleep 3\n\
             exit 1\n"
            .into(),
    }
}

/// The installed disk's shim: the removable path of the golden image's ESP, the file the
/// firmware itself boots (docs/secure-boot.md "Installed OS").
pub const LOCAL_SHIM: &str = "/EFI/BOOT/BOOTX64.EFI";

/// The golden image's ESP as GRUB's `search --fs-uuid` names a FAT volume: its serial as
/// `xxxx-xxxx` (grub-core/fs/fat.c). The image is written as it is, so every installed node's
/// ESP has it.
pub fn esp_fs_uuid() -> String {
    let s = images::golden::layout::IDS.esp_serial.to_ascii_lowercase();
    format!("{}-{}", &s[..4], &s[4..])
}

/// One GRUB word: single quotes keep `$`, `;`, spaces and `#` literal; a `'` is `'\''`.
pub fn grub_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.,:/=+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What a TFTP path names in the Secure Boot tree (pure; the provider does the I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TftpPath {
    /// `grub/grub.cfg`: [`GRUB_CFG`].
    GrubCfg,
    /// `grub/node/<mac>.cfg`: the node's decision.
    NodeCfg(images::bundle::Mac),
    /// `installer/<name>`, one of [`INSTALLER_FILES`].
    Installer(&'static str),
    /// Anything else: the boot files (iPXE, shim, GRUB) or not found.
    Other,
}

/// Classify a requested TFTP path. Only exact names match; `..`, absolute tricks and
/// anything not listed fall to [`TftpPath::Other`] (which serves top-level boot files only).
pub fn classify(requested: &str) -> TftpPath {
    let Ok(rel) = relative_path(requested) else {
        return TftpPath::Other;
    };
    let Some(rel) = rel.to_str() else {
        return TftpPath::Other;
    };
    if rel == "grub/grub.cfg" {
        return TftpPath::GrubCfg;
    }
    if let Some(file) = rel.strip_prefix("grub/node/")
        && let Some(mac) = file.strip_suffix(".cfg")
        && mac.len() == 17
        && let Ok(mac) = mac.to_ascii_lowercase().replace('-', ":").parse()
    {
        return TftpPath::NodeCfg(mac);
    }
    if let Some(name) = rel.strip_prefix("installer/")
        && let Some(f) = INSTALLER_FILES.iter().find(|f| **f == name)
    {
        return TftpPath::Installer(f);
    }
    TftpPath::Other
}

/// The per-MAC decision as GRUB text; the HTTP side implements it (it owns the store).
pub trait NodeConfigs: Send + Sync {
    fn grub_config<'a>(
        &'a self,
        client: SocketAddr,
        mac: images::bundle::Mac,
    ) -> BoxFuture<'a, Result<String, ProviderError>>;
    /// A machine fetched a boot file (diagnostics: iPXE fetched and never heard of again).
    fn boot_file_fetched(&self, client: SocketAddr, name: &str);
}

/// Everything served over TFTP: the boot files, and for Secure Boot nodes GRUB's config
/// (static + per-MAC) and the installer kernel/initrd.
pub struct TftpTree {
    pub boot_files: Arc<crate::boot_files::BootFiles>,
    pub configs: Arc<dyn NodeConfigs>,
    /// `<artifacts>/installer`; `None`: no installer over TFTP.
    pub installer_dir: Option<PathBuf>,
}

fn open_installer(dir: &Path, name: &str) -> Result<Content, ProviderError> {
    let f = std::fs::File::open(dir.join(name)).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ProviderError::NotFound,
        _ => ProviderError::Io(e),
    })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(ProviderError::NotFound);
    }
    Ok(Content::from_file(meta.len(), f))
}

impl Provider for TftpTree {
    fn open<'a>(
        &'a self,
        client: SocketAddr,
        path: &'a str,
    ) -> BoxFuture<'a, Result<Content, ProviderError>> {
        Box::pin(async move {
            match classify(path) {
                TftpPath::GrubCfg => Ok(Content::from_bytes(GRUB_CFG.as_bytes())),
                TftpPath::NodeCfg(mac) => {
                    let text = self.configs.grub_config(client, mac).await?;
                    Ok(Content::from_bytes(text.into_bytes()))
                }
                TftpPath::Installer(name) => {
                    let dir = self.installer_dir.clone().ok_or(ProviderError::NotFound)?;
                    tokio::task::spawn_blocking(move || open_installer(&dir, name))
                        .await
                        .map_err(|e| ProviderError::Io(std::io::Error::other(e)))?
                }
                TftpPath::Other => {
                    let c = self
                        .boot_files
                        .get(path)
                        .map(Content::from_bytes)
                        .ok_or(ProviderError::NotFound)?;
                    self.configs
                        .boot_file_fetched(client, path.trim_start_matches('/'));
                    Ok(c)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn install(args: &[String]) -> String {
        grub_config(
            Script::Install,
            Some(InstallBoot {
                appliance_url: "http://10.0.20.5:8080",
                hostname: "k3s2",
                kernel_args: args,
                secret: "0123abcd",
            }),
        )
    }

    #[test]
    fn install_config_boots_the_installer_with_the_plan_url_over_tftp() {
        let c = install(&["nomodeset".into()]);
        let linux = c.lines().find(|l| l.starts_with("linux ")).unwrap();
        for want in [
            "linux /installer/vmlinuz ",
            "console=ttyS0,115200",
            "ironseed.plan=http://10.0.20.5:8080/plan/k3s2/0123abcd",
            "ironseed.mac=${net_default_mac}",
            " nomodeset",
        ] {
            assert!(linux.contains(want), "{want} missing: {linux}");
        }
        assert!(c.contains("\ninitrd /installer/initrd.img\nboot\n"), "{c}");
        // The file names GRUB asks for exist in the TFTP tree.
        assert_eq!(
            classify("/installer/vmlinuz"),
            TftpPath::Installer("vmlinuz")
        );
        assert_eq!(
            classify("installer/initrd.img"),
            TftpPath::Installer("initrd.img")
        );
    }

    /// Install-once: only the install decision with its secret gets the installer; local and
    /// unknown configs carry no kernel and no secret, and an install without a secret boots
    /// local.
    #[test]
    fn only_install_gets_the_kernel_and_the_secret() {
        for (script, install) in [
            (Script::Local, None),
            (Script::Unknown, None),
            (Script::Install, None),
        ] {
            let c = grub_config(script, install);
            assert!(!c.contains("linux"), "{script:?}: {c}");
            assert!(!c.contains("0123abcd"));
            assert!(c.contains("exit 1"), "{script:?}: {c}");
        }
        assert!(install(&[]).contains("0123abcd"));
    }

    /// Local boot chainloads the installed ESP's shim, found by the golden image's FAT serial;
    /// only when no such ESP exists does it hand back to the firmware.
    #[test]
    fn local_boot_chainloads_the_installed_shim() {
        assert_eq!(esp_fs_uuid(), "1e5e-ed01");
        let c = grub_config(Script::Local, None);
        let want = "search --no-floppy --fs-uuid --set=esp 1e5e-ed01\n\
                    if [ -n \"$esp\" ]; then\n  set root=$esp\n  chainloader /EFI/BOOT/BOOTX64.EFI\n  boot\nfi\n";
        assert!(c.contains(want), "{c}");
        assert!(c.find(want) < c.find("exit 1"), "{c}");
    }

    /// Kernel arguments from the inventory cannot run GRUB commands or expand variables.
    #[test]
    fn inventory_kernel_args_are_quoted_for_grub() {
        let c = install(&["a;reboot".into(), "$x".into(), "it's".into(), "b c".into()]);
        let linux = c.lines().find(|l| l.starts_with("linux ")).unwrap();
        assert!(linux.contains(" 'a;reboot' "), "{linux}");
        assert!(linux.contains(" '$x' "), "{linux}");
        assert!(linux.contains(r" 'it'\''s' "), "{linux}");
        assert!(linux.contains(" 'b c' "), "{linux}");
        assert_eq!(grub_quote("console=ttyS0,115200"), "console=ttyS0,115200");
        assert_eq!(grub_quote(""), "''");
    }

    /// Only the listed names: no path tricks reach the installer folder or a node config.
    #[test]
    fn tftp_paths_are_exact() {
        assert_eq!(classify("grub/grub.cfg"), TftpPath::GrubCfg);
        assert_eq!(classify("/grub/grub.cfg"), TftpPath::GrubCfg);
        let mac: images::bundle::Mac = "52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(
            classify("/grub/node/52:54:00:ab:cd:ef.cfg"),
            TftpPath::NodeCfg(mac)
        );
        assert_eq!(
            classify("grub/node/52-54-00-AB-CD-EF.cfg"),
            TftpPath::NodeCfg(mac)
        );
        for other in [
            "grub/x86_64-efi/grub.cfg",
            "grub/node/../grub.cfg",
            "grub/node/52:54:00:ab:cd.cfg",
            "grub/node/zz:54:00:ab:cd:ef.cfg",
            "installer/../../etc/passwd",
            "installer/vmlinuz/x",
            "installer/other",
            "../installer/vmlinuz",
            "shimx64.efi",
        ] {
            assert_eq!(classify(other), TftpPath::Other, "{other}");
        }
    }

    struct Fake(std::sync::Mutex<Vec<String>>);

    impl NodeConfigs for Fake {
        fn grub_config<'a>(
            &'a self,
            _client: SocketAddr,
            mac: images::bundle::Mac,
        ) -> BoxFuture<'a, Result<String, ProviderError>> {
            Box::pin(async move { Ok(format!("cfg of {mac}")) })
        }
        fn boot_file_fetched(&self, _client: SocketAddr, name: &str) {
            self.0.lock().unwrap().push(name.to_string());
        }
    }

    async fn read(t: &TftpTree, path: &str) -> Result<Vec<u8>, ProviderError> {
        let c = t.open("10.0.0.9:1000".parse().unwrap(), path).await?;
        match c.body {
            crate::content::Body::Bytes(b) => Ok(b.to_vec()),
            crate::content::Body::File(f) => {
                use std::io::Read;
                let mut v = Vec::new();
                f.take(c.size).read_to_end(&mut v).unwrap();
                Ok(v)
            }
            crate::content::Body::Reader(_) => unreachable!(),
        }
    }

    /// The TFTP tree serves the chain's names and nothing beside the installer folder's two
    /// files; boot file fetches reach the diagnostics.
    #[tokio::test]
    async fn the_tftp_tree_serves_exactly_the_chain() {
        let ipxe = tempfile::tempdir().unwrap();
        std::fs::write(ipxe.path().join("snponly.efi"), b"IPXE").unwrap();
        let art = tempfile::tempdir().unwrap();
        let inst = art.path().join("installer");
        std::fs::create_dir(&inst).unwrap();
        std::fs::write(inst.join("vmlinuz"), b"KERNEL").unwrap();
        std::fs::write(inst.join("secret.txt"), b"no").unwrap();
        std::fs::write(art.path().join("other"), b"no").unwrap();
        let mut files = crate::boot_files::BootFiles::load(ipxe.path()).unwrap();
        let shim = art.path().join("shimx64.efi.signed");
        std::fs::write(&shim, b"SHIM").unwrap();
        files.add(SHIM, &shim).unwrap();
        let fake = Arc::new(Fake(Default::default()));
        let t = TftpTree {
            boot_files: Arc::new(files),
            configs: fake.clone(),
            installer_dir: Some(inst.clone()),
        };
        assert_eq!(
            read(&t, "/grub/grub.cfg").await.unwrap(),
            GRUB_CFG.as_bytes()
        );
        assert_eq!(
            read(&t, "/grub/node/52:54:00:ab:cd:ef.cfg").await.unwrap(),
            b"cfg of 52:54:00:ab:cd:ef"
        );
        assert_eq!(read(&t, "/installer/vmlinuz").await.unwrap(), b"KERNEL");
        assert_eq!(read(&t, "shimx64.efi").await.unwrap(), b"SHIM");
        assert_eq!(read(&t, "snponly.efi").await.unwrap(), b"IPXE");
        for refused in [
            "installer/initrd.img", // listed but absent
            "installer/secret.txt",
            "installer/../other",
            "other",
            "grub/x86_64-efi/grub.cfg",
        ] {
            assert!(read(&t, refused).await.is_err(), "{refused}");
        }
        assert_eq!(*fake.0.lock().unwrap(), ["shimx64.efi", "snponly.efi"]);
    }

    /// The static config hands over to exactly the per-MAC path [`classify`] answers.
    #[test]
    fn grub_cfg_sources_the_per_mac_path() {
        let line = GRUB_CFG.lines().find(|l| l.starts_with("source ")).unwrap();
        let path = line
            .trim_start_matches("source ")
            .replace("${net_default_mac}", "52:54:00:ab:cd:ef");
        assert!(matches!(classify(&path), TftpPath::NodeCfg(_)), "{path}");
    }
}
