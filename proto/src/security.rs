//! Security shared by every Sluice binary: the cluster PKI ([`pki`]), the identity a
//! certificate carries ([`identity`]), roles, principals and the table of what each RPC
//! needs ([`access`]), TLS with certificates re-read when they change ([`tls`]), and the
//! tower layer that authenticates and authorises every call of a server ([`layer`]).

pub mod access;
pub mod flags;
pub mod identity;
pub mod layer;
pub mod pki;
pub mod tls;
