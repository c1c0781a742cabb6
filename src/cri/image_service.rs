//! `runtime.v1.ImageService` on the image store.
//!
//! Semantics follow the comments of the CRI proto: ImageStatus answers an
//! absent image with a nil image (not an error), RemoveImage of an absent
//! image succeeds, PullImage returns the image id, which every other call
//! accepts as a reference.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use crate::cri::image_convert::{
    decode_auth, filesystem_usage, required_image_ref, to_cri_image, verbose_info,
};
use crate::image::{ImageError, ImageRecord, ImageStore, RegistryAuth};

/// The CRI ImageService of berthd.
#[derive(Debug, Clone)]
pub struct CriImageService {
    store: Arc<ImageStore>,
}

impl CriImageService {
    pub fn new(store: Arc<ImageStore>) -> Self {
        Self { store }
    }

    /// Runs a synchronous store call (database reads, directory walks) off
    /// the async workers.
    async fn blocking<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&ImageStore) -> Result<T, ImageError> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Status::internal(format!("image store task failed: {e}")))?
            .map_err(Status::from)
    }

    /// Runs `ImageStore::pull` on a blocking-pool thread that drives it with
    /// `Handle::block_on`. The pull future is not provably `Send` (rustc's
    /// higher-ranked lifetime limitation with closures returning async
    /// blocks, rust-lang/rust#102211), and a tonic handler's future must be;
    /// `block_on` has no such requirement. The pull's own tasks still run
    /// on the shared runtime. A pull whose client goes away (kubelet's
    /// timeout) still completes, so kubelet's retry finds the image stored.
    async fn pull(&self, image: String, auth: Option<RegistryAuth>) -> Result<ImageRecord, Status> {
        let store = Arc::clone(&self.store);
        let handle = tokio::runtime::Handle::current();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            handle.block_on(store.pull(&image, auth.as_ref()))
        })
        .await
        .map_err(|e| Status::internal(format!("image pull task failed: {e}")))?
        .map_err(Status::from)
    }
}

fn record_image(image: &str) {
    tracing::Span::current().record("image", image);
}

#[tonic::async_trait]
impl ImageService for CriImageService {
    async fn list_images(
        &self,
        request: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let spec = request.into_inner().filter.and_then(|f| f.image);
        super::image_convert::check_runtime_handler(spec.as_ref(), "ListImages")?;
        let filter = spec
            .map(|spec| spec.image.trim().to_owned())
            .filter(|image| !image.is_empty());
        let records = match filter {
            Some(image) => {
                record_image(&image);
                self.blocking(move |s| s.get(&image))
                    .await?
                    .into_iter()
                    .collect()
            }
            None => self.blocking(|s| s.list()).await?,
        };
        let images = records.iter().map(to_cri_image).collect();
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let image = required_image_ref(req.image.as_ref(), "ImageStatus")?;
        record_image(&image);
        let record = self.blocking(move |s| s.get(&image)).await?;
        let Some(record) = record else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let info = if req.verbose {
            verbose_info(&record)
        } else {
            Default::default()
        };
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri_image(&record)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        request: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = request.into_inner();
        let image = required_image_ref(req.image.as_ref(), "PullImage")?;
        record_image(&image);
        let auth = decode_auth(req.auth.as_ref())?;
        let started = Instant::now();
        tracing::info!(image = %image, authenticated = auth.is_some(), "pulling image");
        let record = self.pull(image.clone(), auth).await?;
        tracing::info!(
            image = %image,
            id = %record.id,
            size = record.size,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "pulled image"
        );
        Ok(Response::new(cri::PullImageResponse {
            image_ref: record.id,
        }))
    }

    async fn remove_image(
        &self,
        request: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let image = required_image_ref(request.get_ref().image.as_ref(), "RemoveImage")?;
        record_image(&image);
        match self.store.remove(&image).await {
            // CRI: removing an image that does not exist is not an error.
            Ok(()) | Err(ImageError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(image = %image, "removed image");
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let usage = self.blocking(|s| s.fs_usage()).await?;
        let fs = filesystem_usage(self.store.root(), usage, SystemTime::now());
        // Containers' writable layers live in the same store (prepared by
        // `ImageStore::prepare_rootfs`), so both answers name one filesystem.
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        }))
    }
}
