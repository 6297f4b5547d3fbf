//! Prints the compiled route table (`traffic` section of a proxy config) of one client
//! workload, as JSON (which is also YAML), for hand-written proxy configs and benchmarks.
//!
//! `cargo run -p meshapi --example route_table -- DIR CLIENT`
#![allow(clippy::unwrap_used)]

use meshmodel::load::{LoadOptions, load};
use meshmodel::model::Inventory;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(client)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: route_table DIR CLIENT");
        return std::process::ExitCode::from(2);
    };
    let loaded = load(&LoadOptions::new(std::path::Path::new(dir)));
    if loaded.has_errors() {
        for d in &loaded.diagnostics {
            eprintln!("{d}");
        }
        return std::process::ExitCode::from(1);
    }
    let inv = Inventory::from_compose(loaded.mesh.compose.as_ref());
    let Some(me) = inv.workloads.iter().find(|w| &w.compose_name == client) else {
        eprintln!("no workload {client}");
        return std::process::ExitCode::from(1);
    };
    match meshmodel::compile::routes::compile_routes(&loaded.mesh, &inv, me) {
        Ok(t) => {
            println!("{}", serde_json::to_string(&t).unwrap());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(1)
        }
    }
}
