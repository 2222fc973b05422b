//! `pxe serve`: load and verify the bundle, bind every socket, drop root, then run DHCP, TFTP
//! and HTTP side by side until SIGINT/SIGTERM, and drain them.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use pxe::boot_files::BootFiles;
use pxe::bundle::{Bundle, LiveBundle};
use pxe::dhcp_policy::{DhcpMode, DhcpPolicyConfig, Firmware, NodeView, PoolRange};
use pxe::leases::LeaseStore;
use pxe::metrics::HttpCounters;
use pxe::net;
use pxe::proto::dhcp::{MacAddr, RecvPort};
use pxe::serve::dhcp::{DhcpContext, DhcpSocket, NodeLookup};
use pxe::serve::http::HttpApp;
use pxe::serve::http::limits::{self, Connections, HttpLimits};
use pxe::serve::tftp::{TftpConfig, TftpStats};
use pxe::state::Store;

use crate::cli::ServeArgs;

/// DHCP's view of the nodes: the plan's MACs with the live install state.
struct PlanLookup {
    bundle: Arc<LiveBundle>,
    store: Arc<Store>,
}

impl NodeLookup for PlanLookup {
    fn node(&self, mac: &MacAddr) -> Option<NodeView> {
        let bundle = self.bundle.get();
        let n = bundle.node_by_mac(mac)?;
        Some(NodeView {
            hostname: n.hostname.to_string(),
            inventory_ip: Some(n.ip),
            state: self.store.state(&n.hostname).unwrap_or_default(),
            firmware: match n.firmware {
                images::bundle::Firmware::Bios => Firmware::Bios,
                images::bundle::Firmware::Uefi => Firmware::Uefi,
            },
            efi_boot_file: n.efi_boot_file,
            secure_boot: n.secure_boot,
        })
    }
}

fn tcp_listener(
    iface: Option<&str>,
    addr: SocketAddrV4,
) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if let Some(dev) = iface {
        s.bind_device(Some(dev.as_bytes()))?;
    }
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(addr).into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}

pub async fn serve(a: &ServeArgs) -> Result<()> {
    let nofile = net::raise_nofile().context("raising the open-file limit (RLIMIT_NOFILE)")?;
    let bundle = Bundle::load(&a.bundle).context("loading bundle")?;
    let plan = &bundle.plan;
    let root = nix::unistd::geteuid().is_root();
    // As root, start the bundle reader now: after the drop to --user this process cannot open
    // the bundle's owner-only files, and `POST /api/v1/reload` still has to.
    let live = Arc::new(if root {
        let exe = std::env::current_exe().context("locating the pxe binary")?;
        LiveBundle::with_reader(bundle.clone(), &exe).context("starting the bundle reader")?
    } else {
        LiveBundle::new(bundle.clone())
    });
    let iface = a.interface.as_deref();
    let iface_ip = match iface {
        Some(i) => net::interface_ipv4(i)
            .with_context(|| format!("reading addresses of {i}"))?
            .with_context(|| format!("interface {i} has no IPv4 address"))
            .map(Some)?,
        None => None,
    };
    let server_ip = a.listen.or(iface_ip).unwrap_or(plan.appliance.ip);
    // Bind the wildcard when serving an interface: DHCP requests arrive as broadcasts.
    let bind_ip = if iface.is_some() {
        Ipv4Addr::UNSPECIFIED
    } else {
        server_ip
    };
    // The bundle's URLs (boot scripts, plans, seeds, reports) all name the appliance's port:
    // serving any other by default would send every node to a closed port.
    let http_port = a.http_port.unwrap_or(plan.appliance.http_port);
    let state_dir = a
        .state
        .clone()
        .unwrap_or_else(|| images::api_token::default_state_dir(root));

    // Owner-only from creation (node state, leases and secrets live there); a symbolic link as
    // the folder itself is refused, since root later hands the folder to --user.
    pxe::privileges::private_dir(&state_dir).context("preparing the state folder")?;
    let hosts: Vec<&str> = plan.nodes.iter().map(|n| n.hostname.as_str()).collect();
    create_state_dir(&state_dir)?;
    let (api_token, token_path) = api_token(a, &state_dir)?;
    let probe = a.arm_new && plan.joined.is_empty();
    let cluster = if probe {
        let p = plan.clone();
        tokio::task::spawn_blocking(move || pxe::serve::http::cluster_answers(&p))
            .await
            .context("probing the cluster")?
    } else {
        None
    };
    let (new_nodes, why) = pxe::serve::http::new_nodes_policy(a.arm_new, plan, cluster);
    if let Some(why) = why {
        tracing::warn!("--arm-new arms nothing: {why}; arm nodes with `pxe arm NODE`");
    }
    let (store, reconciled) = Store::open(
        Some(&state_dir),
        &bundle.id,
        &hosts,
        new_nodes,
        a.install_window,
    )
    .with_context(|| format!("opening node state in {}", state_dir.display()))?;
    let store = Arc::new(store);
    let discovered = Arc::new(
        pxe::discovered::DiscoveredStore::open(Some(&state_dir))
            .with_context(|| format!("opening discovered machines in {}", state_dir.display()))?,
    );
    if !reconciled.new.is_empty() && reconciled.armed.is_empty() {
        tracing::info!(
            new = ?reconciled.new,
            "nodes seen for the first time start disarmed: arm them with `pxe arm NODE` (or `pxe arm --all`)"
        );
    }
    if !reconciled.armed.is_empty() {
        tracing::info!(armed = ?reconciled.armed, "--arm-new: armed the nodes seen for the first time");
    }

    // Bind everything while we may still be root.
    let http = tcp_listener(iface, SocketAddrV4::new(bind_ip, http_port))
        .with_context(|| format!("binding HTTP {bind_ip}:{http_port}"))?;
    let http_port = http.local_addr()?.port();
    if server_ip != plan.appliance.ip || http_port != plan.appliance.http_port {
        tracing::warn!(
            serving = %format!("http://{server_ip}:{http_port}"),
            bundle = %plan.appliance.url,
            "this server's address differs from the bundle's appliance address: installed nodes will report to {}",
            plan.appliance.url
        );
    }
    let tftp = net::udp_socket(iface, SocketAddrV4::new(bind_ip, a.tftp_port))
        .with_context(|| format!("binding TFTP {bind_ip}:{}", a.tftp_port))?;
    let tftp_port = tftp.local_addr()?.port();
    let mut boot_files = BootFiles::load(&a.ipxe_dir).with_context(|| {
        format!(
            "iPXE folder {} (apt-get install ipxe)",
            a.ipxe_dir.display()
        )
    })?;
    // The Secure Boot chain, read while still root. Missing files only matter when a node
    // has `secure_boot`: then it is an error at start, not a silent boot failure later.
    let sb_nodes: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.secure_boot)
        .map(|n| n.hostname.as_str())
        .collect();
    for (name, path, package) in [
        (pxe::secure_boot::SHIM, &a.shim, "shim-signed"),
        (pxe::secure_boot::GRUB, &a.grub, "grub-efi-amd64-signed"),
    ] {
        match boot_files.add(name, path) {
            Ok(()) => {}
            Err(e) if sb_nodes.is_empty() => {
                tracing::debug!(file = %path.display(), "no Secure Boot chain: {e}")
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading {} for the secure_boot nodes {} (apt-get install {package})",
                        path.display(),
                        sb_nodes.join(", ")
                    )
                });
            }
        }
    }
    if a.dhcp == DhcpMode::Proxy && !sb_nodes.is_empty() {
        // Debian's signed GRUB 2.06 reads its TFTP server from the firmware's DHCP ACK only,
        // never from a ProxyDHCP offer: beside a router it asks the router for its config.
        tracing::warn!(
            nodes = %sb_nodes.join(", "),
            "secure_boot nodes with --dhcp proxy: GRUB will look for its config on the next-server of your router's DHCP reply; use --dhcp full, or set the router's next-server (TFTP server) to this server (docs/secure-boot.md)"
        );
    }
    let provider = Arc::new(boot_files);
    // The nodes' own UEFI boot files (profile `efi_boot_file`) come from the same folder.
    let mut wanted: Vec<&str> = vec!["undionly.kpxe", a.efi_file.as_str()];
    wanted.extend(
        plan.nodes
            .iter()
            .filter_map(|n| n.efi_boot_file.map(|f| f.file_name())),
    );
    wanted.sort_unstable();
    wanted.dedup();
    for want in wanted {
        if provider.get(want).is_none() {
            tracing::warn!(dir = %a.ipxe_dir.display(), file = want, "boot file missing: firmware asking for it will fail");
        }
    }

    let mut dhcp_sockets = Vec::new();
    let dhcp_ctx = if a.dhcp != DhcpMode::Off {
        let http_base = if http_port == 80 {
            format!("http://{server_ip}")
        } else {
            format!("http://{server_ip}:{http_port}")
        };
        let mut policy = DhcpPolicyConfig::proxy(server_ip, plan.network.subnet, http_base);
        policy.mode = a.dhcp;
        policy.efi_file = a.efi_file.clone();
        policy.gateway = Some(plan.network.gateway);
        policy.dns = plan.network.dns.clone();
        policy.pool = plan.network.dhcp_pool.as_ref().map(|p| PoolRange {
            start: p.start,
            end: p.end,
        });
        policy.validate().context("DHCP configuration")?;
        let reserved: Vec<Ipv4Addr> = plan
            .nodes
            .iter()
            .map(|n| n.ip)
            .chain([server_ip, plan.api_vip, plan.network.gateway])
            .collect();
        let mut leases = LeaseStore::new(policy.pool, reserved);
        if policy.mode == DhcpMode::Full {
            leases.load(&state_dir).context("loading DHCP leases")?;
        }
        dhcp_sockets.push(DhcpSocket {
            socket: net::udp_socket(iface, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, a.dhcp_port))
                .with_context(|| format!("binding DHCP port {}", a.dhcp_port))?,
            port: RecvPort::Dhcp,
        });
        if policy.mode == DhcpMode::Proxy {
            // PXE spec: after the proxy offer the client asks the boot server on 4011.
            dhcp_sockets.push(DhcpSocket {
                socket: net::udp_socket(
                    iface,
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, net::PXE_PORT),
                )
                .context("binding PXE port 4011")?,
                port: RecvPort::PxeBoot,
            });
        }
        let lookup = Arc::new(PlanLookup {
            bundle: live.clone(),
            store: store.clone(),
        });
        let mut ctx = DhcpContext::new(policy, lookup, leases);
        ctx.state_dir = Some(state_dir.clone());
        ctx.discovered = Some(discovered.clone());
        ctx.interface = a.interface.clone();
        Some(Arc::new(ctx))
    } else {
        None
    };

    // Where `builder images fetch|build` put the images, unless told otherwise. Chosen before
    // the drop: the default depends on whether pxe was started as root.
    let artifacts = a
        .artifacts
        .clone()
        .unwrap_or_else(images::catalog::default_artifacts_dir);
    if root {
        let (uid, gid) =
            pxe::privileges::drop_to(&a.user, &[&state_dir]).context("dropping privileges")?;
        tracing::info!(user = %a.user, %uid, %gid, "dropped root after binding");
    }

    tracing::info!(artifacts = %artifacts.display(), "serving /artifacts/ from");
    let tftp_stats = Arc::new(TftpStats::default());
    let tftp_cfg = TftpConfig {
        stats: tftp_stats.clone(),
        max_per_address: a.tftp_max_per_address,
        ..TftpConfig::default()
    };
    let max_connections = limits::fit_connections(
        a.http_max_connections,
        nofile,
        limits::reserved_fds(tftp_cfg.max_transfers),
    );
    if max_connections < a.http_max_connections {
        tracing::warn!(
            nofile,
            max_connections,
            "the open-file limit lowers the HTTP connection cap (raise LimitNOFILE)"
        );
    }
    let http_limits = HttpLimits {
        max_connections,
        max_per_address: a.http_max_per_address,
        ..HttpLimits::default()
    };
    tracing::info!(
        nofile,
        max_connections,
        max_per_address = http_limits.max_per_address,
        tftp_max_per_address = tftp_cfg.max_per_address,
        "connection limits"
    );
    let app = Arc::new(HttpApp {
        bundle: live.clone(),
        arm_new: a.arm_new,
        store: store.clone(),
        counters: Arc::new(HttpCounters::default()),
        tftp_stats: tftp_stats.clone(),
        dhcp: dhcp_ctx.clone(),
        artifacts: Some(artifacts.clone()),
        boot_files: provider.clone(),
        api_token,
        node_posts: pxe::ratelimit::node_posts(),
        connections: Arc::new(Connections::new(http_limits)),
        discovered: discovered.clone(),
        inspect: a.inspect,
        after_inspect: a.after_inspect,
        streams: Arc::default(),
        nbp_watch: Arc::new(pxe::nbp_watch::NbpWatch::default()),
    });
    let tftp_tree = Arc::new(pxe::secure_boot::TftpTree {
        boot_files: provider.clone(),
        configs: Arc::new(pxe::serve::http::TftpConfigs(app.clone())),
        installer_dir: Some(artifacts.join("installer")),
    });
    let nbp_watch = app.nbp_watch.clone();

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(pxe::serve::http::run(
        http,
        app,
        pxe::serve::stopped(stop_rx.clone()),
    ));
    tasks.spawn(watch_silent_nbp(
        nbp_watch,
        pxe::serve::stopped(stop_rx.clone()),
    ));
    tasks.spawn(pxe::serve::tftp::run(
        tftp,
        tftp_tree,
        tftp_cfg,
        pxe::serve::stopped(stop_rx.clone()),
    ));
    tasks.spawn(sweep_install_windows(
        store.clone(),
        pxe::serve::stopped(stop_rx.clone()),
    ));
    tasks.spawn(save_discovered(
        discovered.clone(),
        pxe::serve::stopped(stop_rx.clone()),
    ));
    if let Some(ctx) = dhcp_ctx {
        tasks.spawn(pxe::serve::dhcp::run(
            dhcp_sockets,
            ctx,
            pxe::serve::stopped(stop_rx.clone()),
        ));
    }

    // Before READY: whoever reads READY may signal at once, and a SIGTERM before the
    // handlers exist kills the process without draining.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // One line for scripts and tests that start the server with port 0.
    println!(
        "READY {}",
        serde_json::json!({
            "server_ip": server_ip,
            "http_port": http_port,
            "tftp_port": tftp_port,
            "dhcp": format!("{:?}", a.dhcp).to_lowercase(),
            "nodes": hosts.len(),
            "inspect": format!("{:?}", a.inspect).to_lowercase(),
            "state_dir": state_dir,
            "api_token_file": token_path,
        })
    );
    tracing::info!(
        bundle = %a.bundle.display(), cluster = %plan.cluster, nodes = hosts.len(),
        %server_ip, http_port, tftp_port, dhcp = ?a.dhcp, "serving"
    );

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        Some(r) = tasks.join_next() => {
            // A server ended on its own: that is a failure; stop the others.
            let _ = stop_tx.send(true);
            match r {
                Ok(Ok(())) => bail!("a server stopped unexpectedly"),
                Ok(Err(e)) => return Err(e).context("server failed"),
                Err(e) => return Err(e).context("server task panicked"),
            }
        }
    }
    let _ = stop_tx.send(true);
    while let Some(r) = tasks.join_next().await {
        r.context("server task panicked")?
            .context("server failed")?;
    }
    Ok(())
}

/// The state folder, owner-only from creation: it holds the install secrets and the API token.
fn create_state_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// The operator API token: `--api-token-file`, or STATE/api-token, created on first start.
fn api_token(a: &ServeArgs, state_dir: &std::path::Path) -> Result<(String, PathBuf)> {
    use images::api_token;
    if let Some(f) = &a.api_token_file {
        let t = api_token::read(f).context("reading --api-token-file")?;
        return Ok((t, f.clone()));
    }
    let path = state_dir.join(api_token::TOKEN_FILE);
    let (token, created) = api_token::load_or_create(&path).context("the operator API token")?;
    if created {
        // Once, on stderr (never the log). The token itself only to a terminal: a service's
        // stderr lands in the journal, which more people read than the state folder.
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!(
                "pxe: created the operator API token {token}\npxe: it is kept in {} (mode 0600); clients read it with --api-token-file or IRONSEED_API_TOKEN",
                path.display()
            );
        } else {
            eprintln!(
                "pxe: created the operator API token in {} (mode 0600); clients read it with --api-token-file or IRONSEED_API_TOKEN",
                path.display()
            );
        }
    }
    Ok((token, path))
}

/// Record the end of install windows as they pass (boot decisions already treat an expired
/// secret as dead; this writes it into the timeline and frees the secret).
async fn sweep_install_windows(
    store: Arc<Store>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {
                let s = store.clone();
                if let Ok(expired) = tokio::task::spawn_blocking(move || s.expire_due()).await
                    && !expired.is_empty()
                {
                    tracing::warn!(nodes = ?expired, "install window expired: re-arm to install");
                }
            }
        }
    }
}

/// Report machines that fetched iPXE and never asked for their script (`pxe::nbp_watch`).
async fn watch_silent_nbp(
    watch: Arc<pxe::nbp_watch::NbpWatch>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {
                for s in watch.sweep(pxe::state::now_ms()) {
                    tracing::warn!(
                        client = %s.client,
                        file = s.file,
                        "fetched {} and never asked for its boot script: if this machine has UEFI Secure Boot on, its firmware refused the unsigned iPXE (set `secure_boot: true` for it, or turn Secure Boot off; docs/secure-boot.md)",
                        s.file
                    );
                }
            }
        }
    }
}

/// Save the discovered machines every 2 s if they changed, off the async workers: the DHCP loop
/// only marks them dirty, so a flood costs one write per tick at most. A last save at shutdown.
async fn save_discovered(
    store: Arc<pxe::discovered::DiscoveredStore>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    tokio::pin!(stop);
    let save = |s: Arc<pxe::discovered::DiscoveredStore>| async move {
        match tokio::task::spawn_blocking(move || s.persist_if_dirty()).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot save discovered machines"),
            Err(e) => tracing::warn!(error = %e, "cannot save discovered machines"),
            Ok(Ok(())) => {}
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => {
                save(store.clone()).await;
                return Ok(());
            }
            _ = tick.tick() => save(store.clone()).await,
        }
    }
}
