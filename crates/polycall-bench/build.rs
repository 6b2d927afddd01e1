//! Compiles `proto/echo.proto` for the tonic peer and `proto/etcd_kv.proto` (the part of
//! etcd's API the cluster benchmark calls) with protox (pure Rust: no protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    println!("cargo:rerun-if-changed=proto/etcd_kv.proto");
    let fds = protox::compile(["echo.proto", "etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // `bytes` fields as `bytes::Bytes`: the payload is not copied into a Vec.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
