//! The `synchro` binary: see `synchro --help` and the README.

fn main() -> std::process::ExitCode {
    synchro::commands::main()
}
