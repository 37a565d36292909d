//! The `portcullis-controller` binary: everything is in the library (`cli`).

fn main() -> std::process::ExitCode {
    portcullis_controller::cli::main()
}
