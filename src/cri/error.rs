//! The one place where subsystem errors become gRPC statuses.
//!
//! Handlers return `Result<_, tonic::Status>` and use `?` on subsystem calls:
//! every subsystem error has exactly one `From` impl here that picks the code
//! and writes a message a kubelet/crictl user can act on. When a subsystem
//! grows a new error variant, the exhaustive matches below stop compiling
//! until it is mapped.

use tonic::{Code, Status};

use crate::image::ImageError;

/// A call of the CRI that berth does not implement yet.
pub fn unimplemented(call: &str) -> Status {
    Status::unimplemented(format!("berth: {call} is not built yet in this berthd"))
}

/// A request that lacks a required field or has an unusable value.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

impl From<ImageError> for Status {
    fn from(err: ImageError) -> Self {
        let code = image_error_code(&err);
        let message = match &err {
            ImageError::Unauthenticated { .. } => format!(
                "{err} (check the username/password or token the pull was given, e.g. the pod's imagePullSecrets)"
            ),
            ImageError::Registry { .. } => format!(
                "{err} (check that the image name and tag exist and that the credentials grant access)"
            ),
            ImageError::Blocked(_) => format!(
                "{err} (see the `registries_config` file named in the [image] table of berthd's config)"
            ),
            ImageError::Verification { .. } => format!(
                "{err}: the registry served content that does not match its digest; nothing was stored"
            ),
            ImageError::UnsafeLayer { .. } => {
                format!("{err}: refusing to unpack this image; nothing was stored")
            }
            ImageError::Config { .. } => {
                format!("{err} (fix the file; berthd rereads it on the next pull)")
            }
            ImageError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                format!("{err} (the image filesystem is full; remove unused images)")
            }
            _ => err.to_string(),
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "image store failure");
        } else {
            tracing::debug!(error = %err, code = ?code, "image request refused");
        }
        Status::new(code, message)
    }
}

/// The gRPC code for an image error.
fn image_error_code(err: &ImageError) -> Code {
    match err {
        ImageError::InvalidReference { .. } => Code::InvalidArgument,
        ImageError::NotFound(_) => Code::NotFound,
        ImageError::Unauthenticated { .. } => Code::Unauthenticated,
        // "does not have the image or refused access to it": a registry
        // never tells which, as Docker's "pull access denied" says.
        ImageError::Registry { .. } => Code::NotFound,
        ImageError::Blocked(_) => Code::PermissionDenied,
        ImageError::Verification { .. } => Code::DataLoss,
        ImageError::UnsafeLayer { .. } => Code::FailedPrecondition,
        ImageError::Stalled { .. } => Code::DeadlineExceeded,
        ImageError::Config { .. } => Code::FailedPrecondition,
        ImageError::Database(_) => Code::Internal,
        ImageError::Io { source, .. } => match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Code::ResourceExhausted,
            _ => Code::Internal,
        },
    }
}

impl From<crate::pod::PodError> for Status {
    fn from(err: crate::pod::PodError) -> Self {
        use crate::pod::PodError as E;
        let code = match &err {
            E::InvalidArgument(_) | E::Spec(_) => Code::InvalidArgument,
            E::NotFound(_) => Code::NotFound,
            E::AlreadyExists(_) => Code::AlreadyExists,
            E::FailedPrecondition(_) => Code::FailedPrecondition,
            E::Unimplemented(_) => Code::Unimplemented,
            E::Timeout(_) => Code::DeadlineExceeded,
            E::Image(e) => image_error_code(e),
            E::Cdi(crate::cdi::CdiError::DeviceNode { .. }) => Code::FailedPrecondition,
            E::Cdi(_) => Code::InvalidArgument,
            E::Network(crate::network::NetworkError::InvalidRequest(_)) => Code::InvalidArgument,
            // No CNI config yet: the node is not ready for pod networks.
            E::Network(crate::network::NetworkError::NotReady(_)) => Code::FailedPrecondition,
            E::Store(e) if is_disk_full(e.raw_os_error()) => Code::ResourceExhausted,
            E::Io { source, .. } if is_disk_full(source.raw_os_error()) => Code::ResourceExhausted,
            E::Namespace(_)
            | E::Cgroup(_)
            | E::ImageVolume(_)
            | E::Io { .. }
            | E::Store(_)
            | E::Network(_)
            | E::Shim(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "pod/container operation failed");
        } else {
            tracing::debug!(error = %err, code = ?code, "pod/container request refused");
        }
        let message = if code == Code::ResourceExhausted {
            format!("{err} (the disk is full: free space on it and retry)")
        } else {
            err.to_string()
        };
        Status::new(code, message)
    }
}

/// ENOSPC or EDQUOT: the disk (or the quota) is full.
fn is_disk_full(errno: Option<i32>) -> bool {
    matches!(errno, Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

impl From<crate::stream::StreamError> for Status {
    fn from(err: crate::stream::StreamError) -> Self {
        use crate::stream::StreamError as E;
        let code = match &err {
            E::InvalidRequest(_) => Code::InvalidArgument,
            E::TooManyRequests(_) => Code::ResourceExhausted,
            E::Config(_) | E::Io { .. } | E::Protocol(_) | E::Backend(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %err, "streaming server failure");
        } else {
            tracing::debug!(error = %err, code = ?code, "streaming request refused");
        }
        Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(err: ImageError) -> Status {
        Status::from(err)
    }

    #[test]
    fn codes_per_image_error() {
        let cases: Vec<(ImageError, Code)> = vec![
            (
                ImageError::InvalidReference {
                    reference: "UPPER".into(),
                    reason: "uppercase repository".into(),
                },
                Code::InvalidArgument,
            ),
            (ImageError::NotFound("busybox".into()), Code::NotFound),
            (
                ImageError::Unauthenticated {
                    registry: "127.0.0.1:5000".into(),
                    message: "401".into(),
                },
                Code::Unauthenticated,
            ),
            (
                ImageError::Registry {
                    registry: "r".into(),
                    message: "manifest unknown".into(),
                },
                Code::NotFound,
            ),
            (ImageError::Blocked("r".into()), Code::PermissionDenied),
            (
                ImageError::Verification {
                    digest: "sha256:00".into(),
                    reason: "digest mismatch".into(),
                },
                Code::DataLoss,
            ),
            (
                ImageError::UnsafeLayer {
                    digest: "sha256:00".into(),
                    reason: "entry ../x".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ImageError::Stalled {
                    reference: "busybox".into(),
                    secs: 60,
                },
                Code::DeadlineExceeded,
            ),
            (
                ImageError::Config {
                    path: "/etc/containers/registries.conf".into(),
                    reason: "bad".into(),
                },
                Code::FailedPrecondition,
            ),
            (ImageError::Database("torn".into()), Code::Internal),
            (
                ImageError::Io {
                    context: "write blob".into(),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                },
                Code::ResourceExhausted,
            ),
            (
                ImageError::Io {
                    context: "write blob".into(),
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                },
                Code::Internal,
            ),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let st = status(err);
            assert_eq!(st.code(), code, "{text}");
            assert!(
                st.message().contains(&text),
                "message {:?} lacks {text:?}",
                st.message()
            );
        }
    }

    #[test]
    fn a_full_disk_is_resource_exhausted() {
        use crate::pod::PodError;
        use crate::store::StoreError;
        let full = || std::io::Error::from_raw_os_error(libc::ENOSPC);
        for err in [
            PodError::Store(StoreError::DbIo(full())),
            PodError::io("write hosts", full()),
        ] {
            let st = Status::from(err);
            assert_eq!(st.code(), Code::ResourceExhausted, "{}", st.message());
            assert!(st.message().contains("disk is full"), "{}", st.message());
        }
        let st = Status::from(PodError::Store(StoreError::PreviousIo));
        assert_eq!(st.code(), Code::Internal);
    }

    #[test]
    fn codes_per_stream_error() {
        use crate::stream::StreamError;
        let st = Status::from(StreamError::InvalidRequest("cmd is empty".into()));
        assert_eq!(st.code(), Code::InvalidArgument);
        assert!(st.message().contains("cmd is empty"));
        let st = Status::from(StreamError::TooManyRequests(1000));
        assert_eq!(st.code(), Code::ResourceExhausted);
        assert!(st.message().contains("1000"));
    }

    #[test]
    fn auth_failure_says_what_to_check() {
        let st = status(ImageError::Unauthenticated {
            registry: "127.0.0.1:5000".into(),
            message: "401 Unauthorized".into(),
        });
        assert!(st.message().contains("127.0.0.1:5000"));
        assert!(st.message().contains("credentials") || st.message().contains("password"));
    }

    #[test]
    fn unimplemented_names_the_call() {
        let st = unimplemented("RunPodSandbox");
        assert_eq!(st.code(), Code::Unimplemented);
        assert!(st.message().contains("RunPodSandbox"));
        assert!(st.message().contains("not built yet"));
    }
}
