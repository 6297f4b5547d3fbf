//! Statically linked binaries for `FROM scratch` images (meshproxy, meshdns, the demo apps),
//! found or built in this order:
//!
//! 1. `MESHCTL_RUNTIME_DIR`: a directory holding them (CI and packagers set it);
//! 2. next to the running `meshctl`, when they are there and statically linked (a release
//!    archive ships them side by side);
//! 3. in the workspace meshctl was built from, when it still exists: `cargo build --release
//!    --target <arch>-unknown-linux-gnu` with `RUSTFLAGS=-C target-feature=+crt-static`
//!    (static-pie; `--target` keeps the flag off build scripts and proc-macros). Cargo's own
//!    progress goes to the terminal.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::DockerError;

/// Environment variable naming a directory of static binaries.
pub const ENV_RUNTIME_DIR: &str = "MESHCTL_RUNTIME_DIR";

/// The workspace packages built for static binaries, all at once.
pub const STATIC_PACKAGES: &[&str] = &["meshproxy", "meshdns", "meshdemo"];

/// The workspace package that builds each binary meshctl may need.
fn package_of(bin: &str) -> Option<&'static str> {
    match bin {
        "meshproxy" => Some("meshproxy"),
        "meshdns" => Some("meshdns"),
        "frontend" | "backend" => Some("meshdemo"),
        _ => None,
    }
}

/// Paths of the static binaries `names`, found or built as the module says.
pub fn find(names: &[&str]) -> Result<BTreeMap<String, PathBuf>, DockerError> {
    if let Some(dir) = std::env::var_os(ENV_RUNTIME_DIR).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return in_dir(&dir, names).map_err(|missing| {
            DockerError::Runtime(format!(
                "{ENV_RUNTIME_DIR}={} lacks {}",
                dir.display(),
                missing.join(", ")
            ))
        });
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        && let Ok(found) = in_dir(&dir, names)
        && found.values().all(|p| is_static(p))
    {
        return Ok(found);
    }
    match workspace() {
        Some(ws) => cargo_build(&ws, names),
        None => Err(DockerError::Runtime(format!(
            "cannot find static {} : set {ENV_RUNTIME_DIR} to a directory holding them, or put them next to meshctl",
            names.join(", ")
        ))),
    }
}

fn in_dir(dir: &Path, names: &[&str]) -> Result<BTreeMap<String, PathBuf>, Vec<String>> {
    let mut found = BTreeMap::new();
    let mut missing = Vec::new();
    for n in names {
        let p = dir.join(n);
        if p.is_file() {
            found.insert((*n).to_string(), p);
        } else {
            missing.push((*n).to_string());
        }
    }
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(missing)
    }
}

/// The workspace meshctl was compiled from, if it is still on this machine.
fn workspace() -> Option<PathBuf> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    let manifest = std::fs::read_to_string(ws.join("Cargo.toml")).ok()?;
    manifest.contains("[workspace]").then_some(ws)
}

/// The target triple for static Linux binaries of this machine's architecture.
pub fn static_target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

fn cargo_build(ws: &Path, names: &[&str]) -> Result<BTreeMap<String, PathBuf>, DockerError> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(ws)
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--target", &static_target()])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for n in names {
        if package_of(n).is_none() {
            return Err(DockerError::Runtime(format!(
                "{n} is not a binary of this workspace"
            )));
        }
    }
    // Always the same package set (as .ci/run and bench/ build it): another set would unify
    // features differently and rebuild every dependency.
    cmd.args(STATIC_PACKAGES.iter().flat_map(|p| ["-p", p]));
    eprintln!(
        "building static {} in {} (cargo build --release --target {})",
        names.join(", "),
        ws.display(),
        static_target()
    );
    let mut child = cmd
        .spawn()
        .map_err(|e| DockerError::Runtime(format!("cannot run cargo: {e}")))?;
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .map_err(|e| DockerError::Runtime(format!("reading cargo's output: {e}")))?;
    }
    let status = child
        .wait()
        .map_err(|e| DockerError::Runtime(format!("waiting for cargo: {e}")))?;
    if !status.success() {
        return Err(DockerError::Runtime(format!(
            "cargo build of the static binaries failed ({status})"
        )));
    }
    let mut found = BTreeMap::new();
    for line in out.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        if let Some(exe) = msg["executable"].as_str() {
            let path = PathBuf::from(exe);
            if let Some(name) = path.file_name().and_then(|n| n.to_str())
                && names.contains(&name)
            {
                found.insert(name.to_string(), path);
            }
        }
    }
    let missing: Vec<&&str> = names.iter().filter(|n| !found.contains_key(**n)).collect();
    if !missing.is_empty() {
        return Err(DockerError::Runtime(format!(
            "cargo did not report {missing:?}"
        )));
    }
    Ok(found)
}

/// True when `path` is an ELF file without a program interpreter (statically linked).
pub fn is_static(path: &Path) -> bool {
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = vec![0u8; 64];
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    // 64-bit little-endian ELF only (what the static target produces).
    if &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return false;
    }
    let u64_at = |b: &[u8], o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
    };
    let u16_at = |b: &[u8], o: usize| -> Option<u16> {
        Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) =
        (u64_at(&head, 32), u16_at(&head, 54), u16_at(&head, 56))
    else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    let table = usize::from(phentsize) * usize::from(phnum);
    let mut buf = vec![0u8; phoff + table];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    if f.read_exact(&mut buf).is_err() {
        return false;
    }
    const PT_INTERP: u32 = 3;
    (0..usize::from(phnum)).all(|i| {
        let at = phoff + i * usize::from(phentsize);
        buf.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            != Some(PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_not_static() {
        // The test binary itself is dynamically linked (no crt-static for host builds).
        let me = std::env::current_exe().unwrap();
        assert!(!is_static(&me));
        assert!(!is_static(Path::new("/nonexistent")));
    }
}
