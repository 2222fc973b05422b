//! Benchmark (not a test): validate and render a generated 1000-node inventory, then write the
//! bundle, and print the wall times. Target: the whole render under 0.5 s on a 2-core machine.
//! Run: `cargo bench -p builder --bench render`

use std::time::Instant;

use builder::diag::Diagnostics;
use builder::inventory::{self, DEFAULT_INVENTORY, ProfileSet};
use builder::render::{self, RenderOptions};
use builder::secrets::Secrets;
use builder::templates::Templates;

fn inventory(nodes: usize) -> String {
    let head = DEFAULT_INVENTORY.split("\nnodes:\n").next().unwrap();
    let head = head
        .replace("subnet: 10.0.20.0/24", "subnet: 10.0.0.0/16")
        .replace("start: 10.0.20.200", "start: 10.0.250.1")
        .replace("end: 10.0.20.249", "end: 10.0.250.200");
    let mut s = format!("{head}\nnodes:\n");
    for i in 0..nodes {
        let (role, profile) = match i {
            0..=2 => ("server", "vm"),
            _ if i % 10 == 0 => ("agent", "r630"),
            _ => ("agent", "optiplex"),
        };
        s.push_str(&format!(
            "  - hostname: node{i}\n    role: {role}\n    profile: {profile}\n    mac: 52:54:00:{:02x}:{:02x}:{:02x}\n    ip: 10.0.{}.{}\n",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff,
            1 + i / 200,
            10 + i % 200
        ));
    }
    s
}

fn main() {
    let n = 1000;
    let text = inventory(n);
    let secrets = Secrets::generate();
    let mut times = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let templates = Templates::embedded();
        let mut d = Diagnostics::default();
        let profiles = ProfileSet::load(&[], &mut d);
        let (inv, more) = inventory::load("bench.yaml", &text, &profiles, &templates);
        let inv = inv.unwrap_or_else(|| panic!("{}", more.render(&|_| None)));
        let t_validate = t0.elapsed();
        let b = render::render(&inv, &secrets, &templates, &RenderOptions::default()).unwrap();
        let t_render = t0.elapsed();
        let dir = tempfile::tempdir().unwrap();
        builder::bundle::write(&dir.path().join("out"), &b).unwrap();
        let t_write = t0.elapsed();
        times.push((t_validate, t_render, t_write, b.files.len()));
    }
    times.sort_by_key(|t| t.1);
    let (v, r, w, files) = times[times.len() / 2];
    println!("builder render, {n} nodes, {files} files (median of 5):");
    println!("  parse + validate       {:>8.1} ms", v.as_secs_f64() * 1e3);
    println!(
        "  + render in memory     {:>8.1} ms   (target < 500 ms)",
        r.as_secs_f64() * 1e3
    );
    println!("  + write bundle (fsync) {:>8.1} ms", w.as_secs_f64() * 1e3);

    // The picture alone (it is part of the render above): drawing it and parsing it back.
    let templates = Templates::embedded();
    let mut d = Diagnostics::default();
    let profiles = ProfileSet::load(&[], &mut d);
    let inv = inventory::load("bench.yaml", &text, &profiles, &templates)
        .0
        .unwrap();
    let mut draw = Vec::new();
    let mut check = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        let svg = builder::topology::svg(&inv, &Default::default());
        draw.push(t0.elapsed());
        let t1 = Instant::now();
        builder::topology::check_svg(&svg, inv.nodes.iter().map(|n| n.hostname.as_str())).unwrap();
        check.push(t1.elapsed());
        size = svg.len();
    }
    draw.sort();
    check.sort();
    println!(
        "  topology.svg: {size} bytes, drawn in {:.1} ms, parsed back and checked in {:.1} ms",
        draw[2].as_secs_f64() * 1e3,
        check[2].as_secs_f64() * 1e3
    );
}
