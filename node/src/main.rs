//! `testmesh`: clap, tracing, then the library. No logic here.

fn main() -> std::process::ExitCode {
    testmesh::cli::main()
}
