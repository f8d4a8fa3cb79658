//! Generates the sluice.v1 code and the descriptor set that server reflection serves and the
//! protobuf JSON mapping (`json.rs`) reads. Messages carry their full names (`prost::Name`),
//! which is how the JSON mapping finds a message's descriptor.
//!
//! The servers are generated apart from the messages and clients, into `server/`, on the
//! messages of the first pass: only they use `ServerCodec` (`src/codec.rs`), which refuses a
//! request that is not valid protobuf as INVALID_ARGUMENT; the clients keep tonic-prost's
//! codec, for which an answer that does not decode is INTERNAL.
use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &["proto/sluice/v1/sluice.proto"];
const INCLUDES: &[&str] = &["proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    // Rarely set: boxed, so a restore point (in every task outcome) grows by a pointer only.
    config.boxed(".sluice.v1.RestorePoint.damage");
    tonic_prost_build::configure()
        .build_server(false)
        .file_descriptor_set_path(out.join("sluice_descriptor.bin"))
        .compile_with_config(config, PROTOS, INCLUDES)?;
    let servers = out.join("server");
    fs::create_dir_all(&servers)?;
    tonic_prost_build::configure()
        .build_client(false)
        .extern_path(".sluice.v1", "crate::pb")
        .codec_path("crate::codec::ServerCodec")
        .out_dir(servers)
        .compile_protos(PROTOS, INCLUDES)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
