//! What every Legato binary shares: layered configuration ([`config`]), tracing
//! ([`telemetry`]), staged shutdown ([`shutdown`]), the NATS connection and the idempotent
//! provisioning of streams and consumers ([`nats`]), the HTTP accept loop ([`http`]), the
//! admin server with `/livez`, `/readyz` and `/metrics` ([`admin`]), opening the configured
//! store ([`store`]) and measuring its calls ([`store_metrics`]), and the overlap of a worker's
//! two stages ([`stages`]).

pub mod admin;
pub mod config;
pub mod http;
pub mod nats;
pub mod shutdown;
pub mod stages;
pub mod store;
pub mod store_metrics;
pub mod telemetry;
