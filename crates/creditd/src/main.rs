//! The `creditd` command. Everything lives in the library: see `lib.rs`.

fn main() -> std::process::ExitCode {
    creditd::run()
}
