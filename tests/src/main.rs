//! `meshctl-e2e`: the meshctl CLI under a name of this package, so the Docker tests can run it
//! (`CARGO_BIN_EXE_meshctl-e2e`). The name must contain "meshctl": `up -d` re-executes
//! `current_exe()` as the background control plane, and `down` only signals a pid whose
//! command line names meshctl.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshctl::cli::main()
}
