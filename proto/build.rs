//! Generates the sluice.v1 code and the descriptor set that server reflection serves and the
//! protobuf JSON mapping (`json.rs`) reads. Messages carry their full names (`prost::Name`),
//! which is how the JSON mapping finds a message's descriptor.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("sluice_descriptor.bin"))
        .compile_with_config(config, &["proto/sluice/v1/sluice.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
