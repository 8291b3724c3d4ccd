//! The `dts` binary: parse, run one operation, render, exit. All logic lives in the library.

fn main() -> std::process::ExitCode {
    dts::cli::dts::main()
}
