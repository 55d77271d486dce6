//! The `virtctl` binary: everything is in the library.

fn main() {
    std::process::exit(kubevirt_virtctl::main_from(std::env::args_os()));
}
