//! The `baton` binary: everything is in the library, so tests and the fuzz
//! targets reach the same code (see `cli::main`).

fn main() {
    std::process::exit(baton::cli::main());
}
