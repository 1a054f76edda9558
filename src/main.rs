//! The `steward` binary: see `steward --help`.

fn main() -> std::process::ExitCode {
    steward::cli::main()
}
