//! The cluster picture: pure functions from the validated inventory to `topology.svg` (in the
//! bundle) and to the text version `builder topology` prints. Both share one description of
//! the boxes ([`picture`]), so the terminal and the browser never disagree.
//!
//! The SVG is a contract with the dashboard, which colours it live: every node is
//! `<g id="node-HOSTNAME" class="node role-ROLE" data-node="HOSTNAME">` holding its box
//! `<rect>`; [`check_svg`] parses the text back and enforces exactly that before a render may
//! write it. Its stylesheet is scoped to `svg.ironseed-topology`, so inlining the picture in a
//! page never restyles the page.
//!
//! No font metrics are available at render time (and reading the machine's fonts would make the
//! output depend on the machine), so text is measured as monospace: 0.6 em per character, the
//! advance of DejaVu Sans Mono, Liberation Mono and Menlo alike.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::inventory::model::{DiskPurpose, Inventory, Node, Role};

/// The picture's path in the bundle.
pub const FILE: &str = "topology.svg";

/// One box: a title line (hostname or what the box is) and its details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    /// `Some(hostname)` for a node; `None` for the gateway, the appliance and the VIP.
    pub node: Option<String>,
    /// `infra-…` id of a box that is not a node.
    pub infra: Option<&'static str>,
    pub role: Option<Role>,
    pub gpu: bool,
    pub lines: Vec<String>,
    /// Free text shown as a tooltip only (the profile description).
    pub note: String,
}

/// A row of the picture: a role's nodes under one heading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub role: Role,
    pub title: String,
    pub cards: Vec<Card>,
}

/// Everything the picture shows, in drawing order; no geometry yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    pub title: String,
    pub subnet: String,
    /// Gateway, appliance, API VIP.
    pub infra: Vec<Card>,
    pub lanes: Vec<Lane>,
}

/// The separators differ: the terminal version stays plain ASCII (any terminal, any log).
#[derive(Clone, Copy)]
struct Glyphs {
    sep: &'static str,
    arrow: &'static str,
}

const UNICODE: Glyphs = Glyphs {
    sep: " · ",
    arrow: "→",
};
const ASCII: Glyphs = Glyphs {
    sep: ", ",
    arrow: "->",
};

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What the picture shows. `joined` are nodes rendered in join form (`builder rebuild`): a
/// joined server is never drawn as the cluster-init one.
pub fn picture(inv: &Inventory, joined: &BTreeSet<String>) -> Picture {
    picture_with(inv, joined, UNICODE)
}

fn picture_with(inv: &Inventory, joined: &BTreeSet<String>, g: Glyphs) -> Picture {
    let c = &inv.cluster;
    let k3s = match (&c.k3s.version, &c.k3s.channel) {
        (Some(v), _) => format!("k3s {v}"),
        (None, Some(ch)) => format!("k3s channel {ch}"),
        (None, None) => "k3s".into(),
    };
    let sep = g.sep;
    let title = format!("{}{sep}{}{sep}{k3s}", c.name, c.domain);
    let net = &inv.network;
    let subnet = format!(
        "subnet {}{sep}gateway {}{sep}pods {}{sep}services {}",
        net.subnet, net.gateway, c.pod_cidr, c.service_cidr
    );
    let dns: Vec<String> = net.dns.iter().map(|d| d.to_string()).collect();
    let infra_card = |id: &'static str, lines: Vec<String>| Card {
        node: None,
        infra: Some(id),
        role: None,
        gpu: false,
        lines,
        note: String::new(),
    };
    let mut gateway = vec!["gateway".to_string(), net.gateway.to_string()];
    if !dns.is_empty() {
        gateway.push(format!("dns {}", dns.join(" ")));
    }
    let infra = vec![
        infra_card("infra-gateway", gateway),
        infra_card(
            "infra-appliance",
            vec![
                "appliance".into(),
                inv.appliance.ip.to_string(),
                format!("pxe serve :{}", inv.appliance.http_port),
            ],
        ),
        infra_card(
            "infra-vip",
            vec![
                "API VIP".into(),
                c.api.vip.to_string(),
                format!("{}:6443", c.api.dns_name),
                "kube-vip".into(),
            ],
        ),
    ];
    let mut lanes = Vec::new();
    for role in [Role::Server, Role::Agent, Role::Nfs] {
        let nodes: Vec<&Node> = inv.nodes.iter().filter(|n| n.role == role).collect();
        if nodes.is_empty() {
            continue;
        }
        let n = nodes.len();
        let title = match role {
            Role::Server => format!(
                "control plane: {}, embedded etcd, behind the VIP",
                plural(n, "server", "servers")
            ),
            Role::Agent => format!(
                "agents: {}, joining through the VIP",
                plural(n, "node", "nodes")
            ),
            Role::Nfs => {
                let to: BTreeSet<&str> = inv
                    .nfs
                    .iter()
                    .flat_map(|x| &x.exports)
                    .map(|e| e.clients.as_str())
                    .collect();
                let to: Vec<&str> = to.into_iter().collect();
                if to.is_empty() {
                    format!("NFS: {}, no k3s", plural(n, "host", "hosts"))
                } else {
                    format!(
                        "NFS: {}, no k3s, exports {} {}",
                        plural(n, "host", "hosts"),
                        g.arrow,
                        to.join(" ")
                    )
                }
            }
        };
        let cards = nodes
            .into_iter()
            .map(|node| Card {
                node: Some(node.hostname.as_str().to_string()),
                infra: None,
                role: Some(role),
                gpu: node.gpu.is_some(),
                lines: node_lines(inv, node, joined, g),
                note: node.profile.description.clone(),
            })
            .collect();
        lanes.push(Lane { role, title, cards });
    }
    Picture {
        title,
        subnet,
        infra,
        lanes,
    }
}

fn node_lines(inv: &Inventory, node: &Node, joined: &BTreeSet<String>, g: Glyphs) -> Vec<String> {
    let host = node.hostname.as_str();
    let mut l = vec![
        host.to_string(),
        node.ip.to_string(),
        format!("profile {}", node.profile.name),
    ];
    if node.role == Role::Server {
        l.push(if node.bootstrap && !joined.contains(host) {
            "etcd, cluster-init".into()
        } else {
            "etcd, joins the VIP".into()
        });
    }
    if let Some(gpu) = &node.gpu {
        l.push(format!("gpu {}", gpu.vendor));
    }
    for d in &node.profile.data_disks {
        l.push(match d.purpose {
            DiskPurpose::Longhorn => format!("longhorn {} ({})", d.name, d.filesystem),
            DiskPurpose::NfsPool => format!("pool {} {} ({})", d.name, d.mount, d.filesystem),
        });
    }
    if node.role == Role::Nfs {
        for e in inv.nfs.iter().flat_map(|n| &n.exports) {
            let here = node
                .profile
                .data_disks
                .iter()
                .any(|d| d.purpose == DiskPurpose::NfsPool && d.name == e.pool);
            if here {
                l.push(format!("export {} {} {}", e.path, g.arrow, e.clients));
            }
        }
    }
    l
}

// ---------------------------------------------------------------------------------------------
// SVG

const FONT: u32 = 12;
const TITLE_FONT: u32 = 16;
const LINE: u32 = 16;
const PAD: u32 = 8;
const GAP: u32 = 16;
const MARGIN: u32 = 16;
/// A lane's title, then room for the VIP's links to pass under it to the server boxes.
const LANE_HEAD: u32 = 36;
/// Boxes per row before a lane wraps: a 100-node rack stays a tall picture, not a 10 m wide one.
const MAX_COLS: usize = 8;

/// Width of `s` in px at `font` px: 0.6 em per character, rounded up.
fn text_w(s: &str, font: u32) -> u32 {
    (s.chars().count() as u32 * font * 3).div_ceil(5)
}

/// Text for XML content and attribute values. Inventory text is operator input; none of it may
/// open a tag, end an attribute or break the document: `& < > " '` become references and the
/// characters XML 1.0 forbids (control characters, U+FFFE, U+FFFF) become U+FFFD.
pub fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\u{FFFE}' | '\u{FFFF}' => o.push('\u{FFFD}'),
            c if c.is_control() => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

struct Size {
    w: u32,
    h: u32,
}

fn card_size(cards: &[Card]) -> Size {
    let w = cards
        .iter()
        .flat_map(|c| &c.lines)
        .map(|l| text_w(l, FONT))
        .max()
        .unwrap_or(0)
        + 2 * PAD;
    let lines = cards.iter().map(|c| c.lines.len()).max().unwrap_or(1) as u32;
    Size {
        w,
        h: lines * LINE + 2 * PAD - (LINE - FONT),
    }
}

fn draw_card(out: &mut String, c: &Card, x: u32, y: u32, s: &Size) {
    match &c.node {
        Some(h) => {
            let h = xml_escape(h);
            let role = c.role.map_or("", Role::as_str);
            let _ = writeln!(
                out,
                r#"<g id="node-{h}" class="node role-{role}" data-node="{h}">"#
            );
            let note = if c.note.is_empty() {
                String::new()
            } else {
                format!(": {}", c.note)
            };
            let _ = writeln!(out, "<title>{h}{}</title>", xml_escape(&note));
        }
        None => {
            let _ = writeln!(
                out,
                r#"<g id="{}" class="infra">"#,
                c.infra.unwrap_or("infra")
            );
        }
    }
    let class = if c.gpu { "box gpu" } else { "box" };
    let _ = writeln!(
        out,
        r#"<rect class="{class}" x="{x}" y="{y}" width="{}" height="{}" rx="6"/>"#,
        s.w, s.h
    );
    for (i, l) in c.lines.iter().enumerate() {
        let cls = if i == 0 { r#" class="head""# } else { "" };
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}"{cls}>{}</text>"#,
            x + PAD,
            y + PAD + FONT - 2 + i as u32 * LINE,
            xml_escape(l)
        );
    }
    out.push_str("</g>\n");
}

const STYLE: &str = r#"<style>
svg.ironseed-topology { font-family: "DejaVu Sans Mono", "Liberation Mono", Menlo, monospace; font-size: 12px; }
.ironseed-topology .bg { fill: #ffffff; }
.ironseed-topology text { fill: #1f2430; }
.ironseed-topology .title { font-size: 16px; font-weight: bold; }
.ironseed-topology .subnet { fill: none; stroke: #7a8499; stroke-dasharray: 6 4; }
.ironseed-topology .lane { fill: #f4f6fa; stroke: #d3d9e4; }
.ironseed-topology .lane-title { font-weight: bold; paint-order: stroke; stroke: #f4f6fa; stroke-width: 5px; }
.ironseed-topology .head { font-weight: bold; }
.ironseed-topology .box { stroke-width: 1.5; }
.ironseed-topology .infra .box { fill: #ffffff; stroke: #5b6475; }
.ironseed-topology .role-server .box { fill: #e4ecff; stroke: #3a66c4; }
.ironseed-topology .role-agent .box { fill: #e5f5e9; stroke: #2f8f4e; }
.ironseed-topology .role-nfs .box { fill: #fff2da; stroke: #b7791f; }
.ironseed-topology .box.gpu { stroke-width: 3; }
.ironseed-topology .link { fill: none; stroke: #3a66c4; stroke-width: 1.5; }
</style>
"#;

/// `topology.svg`: the picture, laid out by role in rows (infrastructure, servers, agents,
/// NFS), each lane a grid of equal boxes sized from its longest line.
pub fn svg(inv: &Inventory, joined: &BTreeSet<String>) -> String {
    render_svg(&picture(inv, joined))
}

fn render_svg(p: &Picture) -> String {
    let inner_x = MARGIN + GAP;
    // Geometry first: every lane's box size and grid, then the canvas that holds them all.
    let infra_size = card_size(&p.infra);
    let infra_w = p.infra.len() as u32 * (infra_size.w + GAP) - GAP;
    struct LaneGeo {
        size: Size,
        cols: u32,
        rows: u32,
        w: u32,
        h: u32,
    }
    let geos: Vec<LaneGeo> = p
        .lanes
        .iter()
        .map(|l| {
            let size = card_size(&l.cards);
            let cols = l.cards.len().clamp(1, MAX_COLS) as u32;
            let rows = l.cards.len().div_ceil(MAX_COLS).max(1) as u32;
            let w = (cols * (size.w + GAP) - GAP + 2 * PAD).max(text_w(&l.title, FONT) + 2 * PAD);
            let h = LANE_HEAD + rows * (size.h + GAP) - GAP + PAD;
            LaneGeo {
                size,
                cols,
                rows,
                w,
                h,
            }
        })
        .collect();
    let content_w = geos
        .iter()
        .map(|g| g.w)
        .chain([
            infra_w,
            text_w(&p.subnet, FONT),
            text_w(&p.title, TITLE_FONT).saturating_sub(2 * GAP),
        ])
        .max()
        .unwrap_or(0);
    let width = content_w + 2 * inner_x;
    let title_h = TITLE_FONT + 12;
    let frame_y = MARGIN + title_h;
    let infra_y = frame_y + PAD + FONT + 2 * PAD;
    let mut lane_y = Vec::with_capacity(geos.len());
    let mut y = infra_y + infra_size.h + GAP;
    for g in &geos {
        lane_y.push(y);
        y += g.h + GAP;
    }
    let frame_h = y - frame_y;
    let height = y + MARGIN;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="ironseed-topology" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{}">"#,
        xml_escape(&format!("cluster {}", p.title))
    );
    o.push_str(STYLE);
    let _ = writeln!(
        o,
        r#"<rect class="bg" x="0" y="0" width="{width}" height="{height}"/>"#
    );
    let _ = writeln!(
        o,
        r#"<text class="title" x="{MARGIN}" y="{}">{}</text>"#,
        MARGIN + TITLE_FONT,
        xml_escape(&p.title)
    );
    let _ = writeln!(
        o,
        r#"<rect class="subnet" x="{MARGIN}" y="{frame_y}" width="{}" height="{frame_h}" rx="10"/>"#,
        width - 2 * MARGIN
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}">{}</text>"#,
        MARGIN + PAD,
        frame_y + PAD + FONT,
        xml_escape(&p.subnet)
    );
    for (i, g) in geos.iter().enumerate() {
        let _ = writeln!(
            o,
            r#"<rect class="lane" x="{inner_x}" y="{}" width="{}" height="{}" rx="8"/>"#,
            lane_y[i], g.w, g.h
        );
    }
    // Each server hangs off the VIP: one elbow per server over a bus just above the boxes. The
    // lane title is drawn after, with a halo, so a link never strikes through it.
    let vip = p.infra.iter().position(|c| c.infra == Some("infra-vip"));
    if let (Some(vi), Some(si)) = (vip, p.lanes.iter().position(|l| l.role == Role::Server)) {
        let vx = inner_x + vi as u32 * (infra_size.w + GAP) + infra_size.w / 2;
        let vy = infra_y + infra_size.h;
        let g = &geos[si];
        let bus = lane_y[si] + LANE_HEAD - PAD - 2;
        for k in 0..p.lanes[si].cards.len() as u32 {
            let (col, row) = (k % g.cols, k / g.cols);
            let sx = inner_x + PAD + col * (g.size.w + GAP) + g.size.w / 2;
            let sy = lane_y[si] + LANE_HEAD + row * (g.size.h + GAP);
            if row == 0 {
                let _ = writeln!(o, r#"<path class="link" d="M{vx} {vy}V{bus}H{sx}V{sy}"/>"#);
            }
        }
    }
    for (i, l) in p.lanes.iter().enumerate() {
        let _ = writeln!(
            o,
            r#"<text class="lane-title" x="{}" y="{}">{}</text>"#,
            inner_x + PAD,
            lane_y[i] + PAD + FONT - 2,
            xml_escape(&l.title)
        );
    }
    for (k, c) in p.infra.iter().enumerate() {
        draw_card(
            &mut o,
            c,
            inner_x + k as u32 * (infra_size.w + GAP),
            infra_y,
            &infra_size,
        );
    }
    for (i, l) in p.lanes.iter().enumerate() {
        let g = &geos[i];
        for (k, c) in l.cards.iter().enumerate() {
            let (col, row) = (k as u32 % g.cols, k as u32 / g.cols);
            debug_assert!(row < g.rows);
            draw_card(
                &mut o,
                c,
                inner_x + PAD + col * (g.size.w + GAP),
                lane_y[i] + LANE_HEAD + row * (g.size.h + GAP),
                &g.size,
            );
        }
    }
    o.push_str("</svg>\n");
    o
}

/// Why a picture does not keep the dashboard contract.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    #[error("not well-formed XML: {0}")]
    Xml(String),
    #[error("the root element is <{0}>, not an SVG <svg>")]
    Root(String),
    #[error("the <svg> root has no viewBox")]
    NoViewBox,
    #[error("node {0} is not in the picture")]
    Missing(String),
    #[error("node {0} is in the picture more than once")]
    Twice(String),
    #[error("the picture has a node {0} the inventory does not")]
    Unknown(String),
    #[error("the group of node {0} breaks the contract: {1}")]
    Group(String, &'static str),
}

const SVG_NS: &str = "http://www.w3.org/2000/svg";

/// Parse `text` back and check the dashboard contract: an SVG root with a viewBox, and for
/// each of `hostnames` exactly one `<g id="node-H" class="node role-…" data-node="H">` holding
/// a `<rect>`, and no node group for anything else.
pub fn check_svg<'a>(
    text: &str,
    hostnames: impl IntoIterator<Item = &'a str>,
) -> Result<(), CheckError> {
    let doc = roxmltree::Document::parse(text).map_err(|e| CheckError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "svg" || root.tag_name().namespace() != Some(SVG_NS) {
        return Err(CheckError::Root(root.tag_name().name().to_string()));
    }
    if root.attribute("viewBox").is_none() {
        return Err(CheckError::NoViewBox);
    }
    let mut want: BTreeSet<&str> = hostnames.into_iter().collect();
    let mut seen = BTreeSet::new();
    for g in root.descendants().filter(|n| {
        n.has_tag_name((SVG_NS, "g"))
            && n.attribute("class")
                .is_some_and(|c| c.split_whitespace().any(|t| t == "node"))
    }) {
        let id = g.attribute("id").unwrap_or("");
        let host = id.strip_prefix("node-").unwrap_or(id).to_string();
        if !id.starts_with("node-") {
            return Err(CheckError::Group(host, "its id does not start with node-"));
        }
        if g.attribute("data-node") != Some(host.as_str()) {
            return Err(CheckError::Group(host, "data-node is not its hostname"));
        }
        let roles = g
            .attribute("class")
            .unwrap_or("")
            .split_whitespace()
            .filter(|t| t.starts_with("role-"))
            .count();
        if roles != 1 {
            return Err(CheckError::Group(host, "its class has no single role-ROLE"));
        }
        if !g.children().any(|c| c.has_tag_name((SVG_NS, "rect"))) {
            return Err(CheckError::Group(host, "it holds no <rect>"));
        }
        if !seen.insert(host.clone()) {
            return Err(CheckError::Twice(host));
        }
        if !want.remove(host.as_str()) {
            return Err(CheckError::Unknown(host));
        }
    }
    match want.into_iter().next() {
        Some(h) => Err(CheckError::Missing(h.to_string())),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Terminal

/// Text that reaches a terminal: a control character from the inventory (an escape sequence in
/// an export path) or a bidi override (which reorders what the terminal shows) is shown as `?`,
/// never sent.
fn printable(s: &str) -> String {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    s.chars()
        .map(|c| if c.is_control() || bidi(c) { '?' } else { c })
        .collect()
}

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// Cut `s` to `w` characters, marking the cut with `...`.
fn fit(s: &str, w: usize) -> String {
    if width_of(s) <= w {
        return s.to_string();
    }
    let keep = w.saturating_sub(3);
    let mut o: String = s.chars().take(keep).collect();
    o.push_str(&".".repeat(w - keep));
    o
}

const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

fn role_colour(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Server) => "\x1b[1;34m",
        Some(Role::Agent) => "\x1b[1;32m",
        Some(Role::Nfs) => "\x1b[1;33m",
        None => BOLD,
    }
}

/// Boxes side by side, as many per row as fit in `width` columns; every box of the group is
/// as wide as the widest (cut to fit the terminal when it is narrower).
fn ascii_cards(out: &mut Vec<String>, cards: &[Card], width: usize, colour: bool) {
    if cards.is_empty() {
        return;
    }
    let lines: Vec<Vec<String>> = cards
        .iter()
        .map(|c| c.lines.iter().map(|l| printable(l)).collect())
        .collect();
    let longest = lines
        .iter()
        .flatten()
        .map(|l| width_of(l))
        .max()
        .unwrap_or(0);
    let inner = longest.min(width.saturating_sub(4)).max(8);
    let cols = ((width + 1) / (inner + 5)).max(1);
    for (chunk, cs) in lines.chunks(cols).zip(cards.chunks(cols)) {
        let rows = chunk.iter().map(Vec::len).max().unwrap_or(0);
        let border = format!("+{}+", "-".repeat(inner + 2));
        out.push(vec![border.as_str(); chunk.len()].join(" "));
        for r in 0..rows {
            let mut line = Vec::with_capacity(chunk.len());
            for (ls, c) in chunk.iter().zip(cs) {
                let text = fit(ls.get(r).map_or("", String::as_str), inner);
                let pad = " ".repeat(inner - width_of(&text));
                line.push(if colour && r == 0 {
                    format!("| {}{text}{RESET}{pad} |", role_colour(c.role))
                } else {
                    format!("| {text}{pad} |")
                });
            }
            out.push(line.join(" "));
        }
        out.push(vec![border.as_str(); chunk.len()].join(" "));
    }
}

/// What `builder topology` prints: the same boxes as `topology.svg`, in plain ASCII, laid out
/// for a terminal of `width` columns; ANSI colour only when `colour` (a terminal).
pub fn ascii(inv: &Inventory, width: usize, colour: bool) -> String {
    render_ascii(&picture_with(inv, &BTreeSet::new(), ASCII), width, colour)
}

fn render_ascii(p: &Picture, width: usize, colour: bool) -> String {
    let width = width.max(20);
    let mut out: Vec<String> = Vec::new();
    let heading = |text: &str, role: Option<Role>| {
        let t = fit(&printable(text), width);
        if colour {
            format!("{}{t}{RESET}", role_colour(role))
        } else {
            t
        }
    };
    out.push(heading(&p.title, None));
    out.push(fit(&printable(&p.subnet), width));
    ascii_cards(&mut out, &p.infra, width, colour);
    for l in &p.lanes {
        out.push(String::new());
        out.push(heading(&l.title, Some(l.role)));
        ascii_cards(&mut out, &l.cards, width, colour);
    }
    let mut s = String::new();
    for l in out {
        s.push_str(l.trim_end());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn homelab() -> crate::inventory::model::Inventory {
        crate::inventory::seed_homelab()
    }

    fn hosts(inv: &Inventory) -> Vec<&str> {
        inv.nodes.iter().map(|n| n.hostname.as_str()).collect()
    }

    #[test]
    fn the_homelab_picture_names_every_node_and_keeps_the_contract() {
        let inv = homelab();
        let s = svg(&inv, &BTreeSet::new());
        check_svg(&s, hosts(&inv)).unwrap();
        assert!(s.contains(
            r#"<g id="node-k3s-master1" class="node role-server" data-node="k3s-master1">"#
        ));
        assert!(s.contains(r#"<g id="node-nfs1" class="node role-nfs" data-node="nfs1">"#));
        for want in [
            "10.0.20.10",
            "k3s-api.lab.home.arpa:6443",
            "etcd, cluster-init",
            "longhorn optane (ext4)",
            "longhorn sas-ssd (ext4)",
            "gpu nvidia",
            "export /srv/media → 10.0.20.0/24",
            "gateway",
            "appliance",
            "profile r630",
        ] {
            assert!(s.contains(want), "{want} missing");
        }
    }

    #[test]
    fn renders_are_byte_identical() {
        let inv = homelab();
        assert_eq!(svg(&inv, &BTreeSet::new()), svg(&inv, &BTreeSet::new()));
        assert_eq!(ascii(&inv, 100, false), ascii(&inv, 100, false));
    }

    #[test]
    fn a_joined_server_is_not_drawn_as_cluster_init() {
        let inv = homelab();
        let s = svg(&inv, &BTreeSet::from(["k3s-master1".to_string()]));
        assert!(!s.contains("cluster-init"));
    }

    /// Protects the SVG against operator text: a profile description and an export path full
    /// of markup and control characters stay text (parsed back, still one group per node, no
    /// element or attribute of theirs).
    #[test]
    fn free_text_cannot_break_out_of_the_svg() {
        let mut inv = homelab();
        let evil = "</text></g><script>alert(1)</script><g id=\"node-x\" class=\"node\">&amp;'\u{1b}\u{0}\u{202e}";
        for n in &mut inv.nodes {
            n.profile.description = evil.into();
        }
        inv.nfs.as_mut().unwrap().exports[0].path = format!("/srv/media{evil}");
        inv.nfs.as_mut().unwrap().exports[0].clients = evil.into();
        let s = svg(&inv, &BTreeSet::new());
        check_svg(&s, hosts(&inv)).unwrap();
        let doc = roxmltree::Document::parse(&s).unwrap();
        assert!(
            !doc.descendants()
                .any(|n| n.has_tag_name((SVG_NS, "script")))
        );
        let titles: Vec<&str> = doc
            .descendants()
            .filter(|n| n.has_tag_name((SVG_NS, "title")))
            .filter_map(|n| n.text())
            .collect();
        assert!(
            titles
                .iter()
                .any(|t| t.contains("<script>alert(1)</script>"))
        );
        // And the terminal gets no escape character from it.
        let a = render_ascii(&picture_with(&inv, &BTreeSet::new(), ASCII), 100, false);
        assert!(!a.contains('\u{1b}') && !a.contains('\0') && !a.contains('\u{202e}'));
    }

    #[test]
    fn xml_escape_covers_markup_and_forbidden_characters() {
        assert_eq!(
            xml_escape("a<b>&\"c'\u{7}\u{FFFE}"),
            "a&lt;b&gt;&amp;&quot;c&apos;\u{FFFD}\u{FFFD}"
        );
    }

    #[test]
    fn check_svg_finds_what_breaks_the_contract() {
        let inv = homelab();
        let s = svg(&inv, &BTreeSet::new());
        let mut more = hosts(&inv);
        more.push("k3s9");
        assert_eq!(check_svg(&s, more), Err(CheckError::Missing("k3s9".into())));
        assert_eq!(
            check_svg(&s, hosts(&inv).into_iter().filter(|h| *h != "k3s1")),
            Err(CheckError::Unknown("k3s1".into()))
        );
        let no_rect = s.replacen(
            r#"<rect class="box" x"#,
            r#"<circle class="box" x"#,
            // the first node box after the three infra boxes
            4,
        );
        assert!(matches!(
            check_svg(&no_rect, hosts(&inv)),
            Err(CheckError::Group(_, "it holds no <rect>"))
        ));
        assert!(matches!(
            check_svg(&s.replace("data-node=\"k3s2\"", "data-node=\"k3s3\""), hosts(&inv)),
            Err(CheckError::Group(h, _)) if h == "k3s2"
        ));
        assert_eq!(
            check_svg(&s.replacen(" viewBox=", " viewbox=", 1), hosts(&inv)),
            Err(CheckError::NoViewBox)
        );
        assert!(matches!(
            check_svg(&s.replacen("<text", "<text <", 1), hosts(&inv)),
            Err(CheckError::Xml(_))
        ));
        assert!(matches!(
            check_svg(
                "<html xmlns=\"http://www.w3.org/1999/xhtml\"/>",
                hosts(&inv)
            ),
            Err(CheckError::Root(_))
        ));
    }

    #[test]
    fn boxes_grow_with_their_text() {
        let mut inv = homelab();
        let narrow = svg(&inv, &BTreeSet::new());
        inv.nfs.as_mut().unwrap().exports[0].path = format!("/srv/media/{}", "x".repeat(80));
        let wide = svg(&inv, &BTreeSet::new());
        let w = |s: &str| -> u32 {
            let doc = roxmltree::Document::parse(s).unwrap();
            let g = doc
                .descendants()
                .find(|n| n.attribute("id") == Some("node-nfs1"))
                .unwrap();
            let r = g
                .children()
                .find(|c| c.has_tag_name((SVG_NS, "rect")))
                .unwrap();
            r.attribute("width").unwrap().parse().unwrap()
        };
        assert!(w(&wide) >= w(&narrow) + text_w(&"x".repeat(80), FONT));
    }

    #[test]
    fn ascii_fits_the_width_and_wraps_rows() {
        let inv = homelab();
        for width in [40, 60, 100, 200] {
            let a = ascii(&inv, width, false);
            for l in a.lines() {
                assert!(width_of(l) <= width, "{width}: {l:?} is too wide");
            }
            for h in hosts(&inv) {
                assert!(a.contains(h), "{width}: {h} missing");
            }
        }
        // Three servers side by side at 100 columns, one above the other at 40.
        let row = |a: &str| {
            a.lines()
                .find(|l| l.contains("k3s-master1"))
                .unwrap()
                .to_string()
        };
        assert!(row(&ascii(&inv, 100, false)).contains("k3s-master3"));
        assert!(!row(&ascii(&inv, 40, false)).contains("k3s-master2"));
        assert!(!ascii(&inv, 100, false).contains('\x1b'));
        assert!(ascii(&inv, 100, true).contains("\x1b[1;34mk3s-master1"));
    }
}
