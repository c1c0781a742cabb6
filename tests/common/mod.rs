//! Shared helpers of the integration tests (a module per topic).
#![allow(dead_code)]

pub mod oci_image;
pub mod registry;
