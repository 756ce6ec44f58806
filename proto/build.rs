//! Compiles `raft.proto` and `admin.proto` with protox (pure Rust), so a build needs no system
//! `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["raft.proto", "admin.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
