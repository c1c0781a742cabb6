//! The CRI gRPC services: thin adapters from CRI messages to the subsystems.
//!
//! - [`server`]: the unix socket, the tonic server, graceful shutdown.
//! - [`runtime_service`]: `runtime.v1.RuntimeService` on [`crate::pod`]
//!   (the calls berth does not serve yet answer Unimplemented, saying so).
//! - [`image_service`]: `runtime.v1.ImageService` on [`crate::image::ImageStore`].
//! - [`error`]: the one place subsystem errors become gRPC statuses.
//! - [`authority`]: any `:authority` a client sends on the CRI socket.
//! - [`deadline`]: the client's `grpc-timeout` answered with DEADLINE_EXCEEDED.

pub mod authority;
pub mod deadline;
pub mod error;
pub mod image_convert;
pub mod image_service;
pub mod runtime_service;
pub mod server;
pub mod socket;

pub use image_service::CriImageService;
pub use runtime_service::CriRuntimeService;
pub use server::{CriServer, ServerError};

/// The name berthd reports in `Version`.
pub const RUNTIME_NAME: &str = "berth";
/// The CRI API version berthd serves.
pub const RUNTIME_API_VERSION: &str = "v1";
