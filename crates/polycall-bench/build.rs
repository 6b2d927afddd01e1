//! Compiles `proto/echo.proto` for the tonic peer with protox (pure Rust: no protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/echo.proto");
    let fds = protox::compile(["echo.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // `bytes` fields as `bytes::Bytes`: the payload is not copied into a Vec.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
