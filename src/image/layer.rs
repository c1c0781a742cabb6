//! One layer's pipeline: the download stream is teed into the content store
//! temp file and the compressed digest, and at the same time decompressed
//! (gzip, zstd or none, by magic), hashed for the diff ID and unpacked into a
//! temp snapshot dir. Nothing is renamed into place unless every check passed.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;

use bytes::{Buf, Bytes};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::ImageError;
use super::content::{HashingReader, LimitExceeded};
use super::unpack::{UnpackStats, unpack};

/// What the worker needs to know about the layer.
#[derive(Debug, Clone)]
pub struct LayerJob {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
    pub max_uncompressed: u64,
    /// Whether `max_uncompressed` is the free space of the image
    /// filesystem (less than the configured `max_layer_bytes`): exceeding
    /// it means the disk would be full.
    pub limited_by_free_space: bool,
}

/// A verified layer, ready to be moved into place.
#[derive(Debug)]
pub struct UnpackedLayer {
    pub blob: tempfile::NamedTempFile,
    pub stats: UnpackStats,
}

/// Bytes arriving from the async download.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.cur = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// Writes everything read into the blob file and hashes it.
struct Tee {
    inner: ChannelReader,
    file: BufWriter<std::fs::File>,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(std::io::Error::other(format!(
                "blob is larger than the {} bytes its descriptor says",
                self.limit
            )));
        }
        self.hasher.update(&buf[..n]);
        self.file.write_all(&buf[..n])?;
        Ok(n)
    }
}

enum Decoder {
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<Tee>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<Tee>>>),
    Plain(Box<BufReader<Tee>>),
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(d) => d.read(buf),
        }
    }
}

impl Decoder {
    fn into_tee(self) -> Tee {
        match self {
            Decoder::Gzip(d) => d.into_inner().into_inner(),
            Decoder::Zstd(d) => d.finish().into_inner(),
            Decoder::Plain(d) => (*d).into_inner(),
        }
    }
}

/// Compression as told by the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
    None,
}

pub fn detect(magic: &[u8]) -> Compression {
    if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

fn media_compression(media_type: &str) -> Option<Compression> {
    if media_type.ends_with("gzip") {
        Some(Compression::Gzip)
    } else if media_type.ends_with("zstd") {
        Some(Compression::Zstd)
    } else if media_type.ends_with(".tar") || media_type.ends_with("tar") {
        Some(Compression::None)
    } else {
        None
    }
}

/// Runs on a blocking thread: consumes the download, verifies, unpacks.
pub fn run(
    job: &LayerJob,
    rx: mpsc::Receiver<Bytes>,
    blob: tempfile::NamedTempFile,
    dir: &Path,
) -> Result<UnpackedLayer, ImageError> {
    let verification = |reason: String| ImageError::Verification {
        digest: job.digest.clone(),
        reason,
    };
    let file = blob
        .reopen()
        .map_err(super::content::io_err("reopen temp blob"))?;
    let tee = Tee {
        inner: ChannelReader {
            rx,
            cur: Bytes::new(),
        },
        file: BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        count: 0,
        limit: job.size,
    };
    let mut buffered = BufReader::with_capacity(256 * 1024, tee);
    let magic = buffered
        .fill_buf()
        .map_err(|e| verification(format!("download: {e}")))?
        .to_vec();
    let compression = detect(&magic);
    if let Some(declared) = media_compression(&job.media_type)
        && declared != compression
    {
        tracing::warn!(layer = %job.digest, media_type = %job.media_type, detected = ?compression, "layer compression differs from its media type; going by content");
    }
    let decoder = match compression {
        Compression::Gzip => {
            Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(buffered)))
        }
        Compression::Zstd => Decoder::Zstd(Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| verification(format!("zstd: {e}")))?,
        )),
        Compression::None => Decoder::Plain(Box::new(buffered)),
    };
    let mut diff = HashingReader::new(decoder, job.max_uncompressed);
    let unpacked = unpack(&mut diff, dir, &job.digest, job.max_uncompressed);
    // Whatever the outcome, read the stream to its end for the digests, so
    // that a bad download is reported as such rather than as a bad archive.
    let finished = diff.finish();
    let (diff_digest, diff_size, decoder) = match finished {
        Ok(v) => v,
        Err(e) => {
            if e.get_ref().is_some_and(|i| i.is::<LimitExceeded>()) && job.limited_by_free_space {
                return Err(ImageError::Io {
                    context: format!(
                        "layer {}: uncompressed it is larger than the {} bytes free on the image filesystem",
                        job.digest, job.max_uncompressed
                    ),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
            if e.get_ref().is_some_and(|i| i.is::<LimitExceeded>()) {
                return Err(ImageError::UnsafeLayer {
                    digest: job.digest.clone(),
                    reason: format!(
                        "uncompressed stream exceeds the limit of {} bytes (decompression bomb?)",
                        job.max_uncompressed
                    ),
                });
            }
            // The stream itself broke (the download, or its compression):
            // that is the cause, whatever the archive reader made of the
            // part it saw (a stream cut short also reads as a cut archive).
            if let Err(u) = &unpacked {
                tracing::debug!(layer = %job.digest, error = %u, "unpack stopped too");
            }
            return Err(verification(format!("decompress: {e}")));
        }
    };
    let mut tee = decoder.into_tee();
    std::io::copy(&mut tee, &mut std::io::sink())
        .map_err(|e| verification(format!("download: {e}")))?;
    let compressed = format!("sha256:{}", hex::encode(tee.hasher.finalize_reset()));
    if tee.count != job.size {
        return Err(verification(format!(
            "got {} bytes, the manifest says {}",
            tee.count, job.size
        )));
    }
    if compressed != job.digest {
        return Err(verification(format!("content has digest {compressed}")));
    }
    let stats = unpacked?;
    if diff_digest != job.diff_id {
        return Err(verification(format!(
            "uncompressed content has digest {diff_digest}, the config's diff ID is {}",
            job.diff_id
        )));
    }
    tee.file
        .flush()
        .map_err(super::content::io_err("write temp blob"))?;
    tracing::debug!(layer = %job.digest, ?compression, compressed = job.size, uncompressed = diff_size, files = stats.entries, "layer verified and unpacked");
    Ok(UnpackedLayer { blob, stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    fn run_on(
        job: &LayerJob,
        bytes: Vec<u8>,
    ) -> (Result<UnpackedLayer, ImageError>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snap");
        std::fs::create_dir(&dir).unwrap();
        let blob = tempfile::NamedTempFile::new_in(tmp.path()).unwrap();
        let (tx, rx) = mpsc::channel(4);
        let feeder = std::thread::spawn(move || {
            for chunk in bytes.chunks(1000) {
                if tx.blocking_send(Bytes::copy_from_slice(chunk)).is_err() {
                    break;
                }
            }
        });
        let r = run(job, rx, blob, &dir);
        feeder.join().unwrap();
        (r, tmp)
    }

    fn job(blob: &[u8], diff: &[u8], media_type: &str) -> LayerJob {
        LayerJob {
            digest: crate::image::content::sha256_digest(blob),
            size: blob.len() as u64,
            media_type: media_type.into(),
            diff_id: crate::image::content::sha256_digest(diff),
            max_uncompressed: 1 << 30,
            limited_by_free_space: false,
        }
    }

    #[test]
    fn gzip_zstd_and_plain_layers_verify() {
        let tar = tar_with("f", b"hello");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        for (blob, mt) in [
            (gz, "application/vnd.oci.image.layer.v1.tar+gzip"),
            (zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
            (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
        ] {
            let j = job(&blob, &tar, mt);
            let (r, _tmp) = run_on(&j, blob.clone());
            let l = r.unwrap();
            assert_eq!(std::fs::read(_tmp.path().join("snap/f")).unwrap(), b"hello");
            assert_eq!(std::fs::read(l.blob.path()).unwrap(), blob);
        }
    }

    #[test]
    fn wrong_digest_size_or_diff_id_is_refused() {
        let tar = tar_with("f", b"hello");
        let mut j = job(&tar, &tar, "");
        j.digest = crate::image::content::sha256_digest(b"other");
        assert!(matches!(
            run_on(&j, tar.clone()).0,
            Err(ImageError::Verification { .. })
        ));
        let mut j = job(&tar, &tar, "");
        j.size -= 1;
        assert!(matches!(
            run_on(&j, tar.clone()).0,
            Err(ImageError::Verification { .. })
        ));
        let mut j = job(&tar, &tar, "");
        j.diff_id = crate::image::content::sha256_digest(b"x");
        let e = run_on(&j, tar.clone()).0.unwrap_err();
        assert!(e.to_string().contains("diff ID"), "{e}");
        // A truncated download.
        let j = job(&tar, &tar, "");
        assert!(matches!(
            run_on(&j, tar[..700].to_vec()).0,
            Err(ImageError::Verification { .. })
        ));
    }

    /// A layer that ends right after its last entry's data (umoci 0.4.7's
    /// `insert`): accepted as Go's archive/tar accepts it, and its digest
    /// and diff ID are still those of the bytes as sent.
    #[test]
    fn layer_without_padding_or_trailer_verifies_over_its_own_bytes() {
        let full = tar_with("f", b"hello");
        let cut = full[..512 + 5].to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&cut).unwrap();
        let gz = gz.finish().unwrap();
        let j = job(&gz, &cut, "application/vnd.oci.image.layer.v1.tar+gzip");
        let (r, tmp) = run_on(&j, gz.clone());
        r.unwrap();
        assert_eq!(std::fs::read(tmp.path().join("snap/f")).unwrap(), b"hello");
        // The diff ID of the padded stream is not this layer's.
        let mut j = job(&gz, &full, "");
        j.digest = crate::image::content::sha256_digest(&gz);
        let e = run_on(&j, gz.clone()).0.unwrap_err();
        assert!(e.to_string().contains("diff ID"), "{e}");
    }

    #[test]
    fn bomb_is_refused() {
        let tar = tar_with("zeros", &vec![0u8; 4 << 20]);
        let zst = zstd::encode_all(&tar[..], 3).unwrap();
        let mut j = job(&zst, &tar, "");
        j.max_uncompressed = 1 << 20;
        let e = run_on(&j, zst).0.unwrap_err();
        assert!(matches!(e, ImageError::UnsafeLayer { .. }), "{e}");
    }
}
