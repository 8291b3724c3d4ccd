//! The `dt-agent` binary (robot side). Its commands arrive with the agent issue.

fn main() -> std::process::ExitCode {
    dts::cli::agent::main()
}
