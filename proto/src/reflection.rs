//! Server reflection for every Sluice server, in both the v1 and the v1alpha protocol (older
//! clients such as grpcurl before 1.9 speak only v1alpha). Each server lists the services it
//! serves, health and reflection, not every service of `sluice.v1`: a client that discovers
//! a service through reflection can call it there.

use tonic_reflection::{
    pb,
    server::{Builder, Error, v1, v1alpha},
};

/// The full names of the services every server has beside its own.
const COMMON: [&str; 3] = [
    tonic_health::pb::health_server::SERVICE_NAME,
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn builder(services: &[&str]) -> Builder<'static> {
    let builder = Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    services.iter().chain(&COMMON).fold(builder, |b, name| b.with_service_name(*name))
}

/// The v1 reflection service of a server serving `services` (full names, such as
/// `sluice.v1.JobService`).
pub fn v1(
    services: &[&str],
) -> Result<v1::ServerReflectionServer<impl v1::ServerReflection>, Error> {
    // Each build adds its own protocol's descriptors only; both are listed, so both resolve.
    builder(services)
        .register_encoded_file_descriptor_set(pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
}

/// The v1alpha reflection service of a server serving `services`.
pub fn v1alpha(
    services: &[&str],
) -> Result<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>, Error> {
    builder(services)
        .register_encoded_file_descriptor_set(pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
}
