pub mod identity;
pub mod tls;
pub mod transport;
