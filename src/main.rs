//! The `steward` binary: see `steward --help`.

fn main() -> std::process::ExitCode {
    steward::App::new().run_cli()
}
