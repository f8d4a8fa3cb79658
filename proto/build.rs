//! Generates the sluice.v1 code and the descriptor set that server reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sluice_descriptor.bin"))
        .compile_protos(&["proto/sluice/v1/sluice.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
