fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use the vendored protoc so a fresh machine needs no protobuf-compiler package.
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .compile_protos(&["proto/warrant.proto", "proto/raft.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
