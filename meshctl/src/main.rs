//! meshctl: the CLI; everything is in [`meshctl::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    meshctl::cli::main()
}
