//! The CRI gRPC services: thin adapters from CRI messages to the subsystems.
