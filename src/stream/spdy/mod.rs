//! SPDY/3.1 as the Kubernetes streaming protocols use it: the frame codec
//! with its zlib header compression, and a server-side connection that
//! turns client-opened streams into bounded byte channels.

pub mod conn;
pub mod dictionary;
pub mod frame;
