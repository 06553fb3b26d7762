//! Saving and loading a [`ParamStore`] as safetensors, with parameter paths as tensor names.
//!
//! Writes are atomic: the bytes go to `FILE.tmp`, are flushed to disk (`fsync`), and only then
//! renamed over `FILE`, so a crash mid-save leaves the previous checkpoint intact.

use crate::params::ParamStore;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a checkpoint could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid safetensors.
    #[error("{path}: not a valid safetensors file: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The file does not fit the model; every problem is listed.
    #[error("{path}: checkpoint does not match the model:\n{}", problems.join("\n"))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// One line per missing, unexpected or mis-shaped tensor.
        problems: Vec<String>,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename itself durable; not every platform can open a directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Named f32 tensors: `(name, shape, values)`.
pub type NamedTensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// Tensors read from a file, by name: `(shape, values)`.
pub type TensorMap = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes named f32 tensors as a safetensors file (atomically).
pub fn write_tensors(path: &Path, tensors: &NamedTensors) -> Result<(), CheckpointError> {
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let mut views = Vec::with_capacity(tensors.len());
    for ((name, shape, _), data) in tensors.iter().zip(&bytes) {
        let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).map_err(|e| {
            CheckpointError::Format { path: path.to_path_buf(), message: format!("tensor {name}: {e}") }
        })?;
        views.push((name.clone(), view));
    }
    let out = safetensors::tensor::serialize(views, None)
        .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), message: e.to_string() })?;
    write_atomic(path, &out)
}

/// Reads every tensor of a safetensors file as f32 (F32, F16 and BF16 are converted; other
/// dtypes are an error naming the tensor).
pub fn read_tensors(path: &Path) -> Result<TensorMap, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), message: e.to_string() })?;
    let mut out = HashMap::new();
    for (name, t) in st.tensors() {
        let d = t.data();
        let values: Vec<f32> = match t.dtype() {
            safetensors::Dtype::F32 => {
                d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            safetensors::Dtype::F16 => {
                d.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            safetensors::Dtype::BF16 => {
                d.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
            }
            safetensors::Dtype::I32 => {
                d.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32).collect()
            }
            other => {
                return Err(CheckpointError::Format {
                    path: path.to_path_buf(),
                    message: format!("tensor {name} has dtype {other:?}; expected F32, F16, BF16 or I32"),
                })
            }
        };
        out.insert(name, (t.shape().to_vec(), values));
    }
    Ok(out)
}

impl ParamStore {
    /// Serialises every parameter (f32, little-endian) as safetensors bytes.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let bytes: Vec<Vec<u8>> = self
            .params()
            .iter()
            .map(|p| self.value_of(p).to_vec::<f32>().iter().flat_map(|v| v.to_le_bytes()).collect())
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .params()
            .iter()
            .zip(&bytes)
            .map(|(p, data)| {
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, p.shape.clone(), data)
                    .expect("a parameter's byte length matches its shape by construction");
                (p.name.clone(), view)
            })
            .collect();
        safetensors::tensor::serialize(views, None).expect("f32 views of matching length always serialise")
    }

    /// Saves every parameter to `path` (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        write_atomic(path.as_ref(), &self.to_safetensors())
    }

    /// Loads parameters from `path` into this store. Every tensor of the model must be present
    /// with the right shape and no others may be; otherwise nothing is changed and the error
    /// lists each missing, unexpected and mis-shaped tensor by name.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<(), CheckpointError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(io(path))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| CheckpointError::Format { path: path.to_path_buf(), message: e.to_string() })?;
        let tensors: HashMap<String, safetensors::tensor::TensorView<'_>> = st.tensors().into_iter().collect();
        let mut problems = Vec::new();
        for p in self.params() {
            match tensors.get(&p.name) {
                None => problems.push(format!("missing tensor {} (shape {:?})", p.name, p.shape)),
                Some(t) if t.shape() != p.shape.as_slice() => {
                    problems.push(format!("tensor {} has shape {:?}, the model needs {:?}", p.name, t.shape(), p.shape))
                }
                Some(t) if t.dtype() != safetensors::Dtype::F32 => {
                    problems.push(format!("tensor {} has dtype {:?}, expected F32", p.name, t.dtype()))
                }
                Some(_) => {}
            }
        }
        let mut unexpected: Vec<&String> = tensors.keys().filter(|k| self.get(k).is_none()).collect();
        unexpected.sort();
        problems.extend(unexpected.into_iter().map(|k| format!("unexpected tensor {k} (not in the model)")));
        if !problems.is_empty() {
            return Err(CheckpointError::Mismatch { path: path.to_path_buf(), problems });
        }
        for p in self.params() {
            let src = tensors[&p.name].data();
            let values: Vec<f32> = src.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            self.set_values(p, &values);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Init, Linear, ParamKind, ParamStore};
    use yuanli_tensor::{DType, Rng, Tensor};

    fn model(d_out: usize, extra: bool) -> ParamStore {
        let mut s = ParamStore::new();
        let mut rng = Rng::new(3);
        Linear::new(&mut s, "fc1", 4, 3, true, Init::KaimingUniform, &mut rng).unwrap();
        Linear::new(&mut s, "fc2", 3, d_out, false, Init::KaimingUniform, &mut rng).unwrap();
        if extra {
            s.param("head.scale", Tensor::ones(&[1], DType::F32), ParamKind::Norm).unwrap();
        }
        s
    }

    #[test]
    fn save_and_reload_is_bit_identical() {
        let dir = std::env::temp_dir().join(format!("yuanli-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let a = model(2, false);
        a.save(&path).unwrap();
        let b = model(2, false);
        b.value_arena().fill_(0.0);
        b.load(&path).unwrap();
        let (va, vb) = (a.value_arena().to_vec::<f32>(), b.value_arena().to_vec::<f32>());
        assert!(va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(!path.with_extension("safetensors.tmp").exists(), "no temporary file left behind");

        // A model with a different head: every problem is named.
        let c = model(5, true);
        let err = c.load(&path).unwrap_err().to_string();
        assert!(err.contains("tensor fc2.weight has shape [2, 3], the model needs [5, 3]"), "{err}");
        assert!(err.contains("missing tensor head.scale"), "{err}");
        let d = {
            let mut s = ParamStore::new();
            Linear::new(&mut s, "fc1", 4, 3, true, Init::Zeros, &mut Rng::new(0)).unwrap();
            s
        };
        let err = d.load(&path).unwrap_err().to_string();
        assert!(err.contains("unexpected tensor fc2.weight"), "{err}");
        std::fs::write(dir.join("junk.safetensors"), b"not a checkpoint").unwrap();
        let err = a.load(dir.join("junk.safetensors")).unwrap_err().to_string();
        assert!(err.contains("junk.safetensors: not a valid safetensors file"), "{err}");
        assert!(a.load(dir.join("absent.safetensors")).unwrap_err().to_string().contains("absent.safetensors"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
