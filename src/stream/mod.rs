//! The exec / attach / port-forward streaming server.
