//! The versioned model file of the heavy ranker: a safetensors file (readable by any safetensors
//! reader) whose `__metadata__` carries the version, activation, task names, output transforms,
//! input schema and a CRC-32 of the whole file, so a truncated or corrupted file is refused.
//!
//! Layout: u64 LE header length, JSON header (space-padded to 8 bytes), raw little-endian f32
//! tensors `cross.{i}.weight|bias` and `layers.{i}.weight|bias` (weights shaped `(in, out)`).
//! The CRC (IEEE, as `zlib.crc32`) covers every byte with the 8 hex digits of `crc32` read as
//! `"00000000"`.

use std::io::Write;
use std::path::Path;

use super::act::{Activation, OutputTransform};
use super::gemm::Kernel;
use super::json::{self, quote, Json};
use super::mlp::{DenseLayer, LayerSpec, Mlp, MlpConfig};
use crate::{Error, Result};

const FORMAT: &str = "fyp_core.mlp";
const FORMAT_VERSION: &str = "1";
const CRC_KEY: &[u8] = b"\"crc32\":\"";

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// Running CRC-32 (IEEE); start with `!0`, finish with `!crc`.
fn crc_update(mut crc: u32, bytes: &[u8]) -> u32 {
    for &b in bytes {
        crc = CRC_TABLE[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32 of `bytes` with the 8 bytes at `hole` read as ASCII zeros.
fn file_crc(bytes: &[u8], hole: usize) -> u32 {
    let c = crc_update(!0, &bytes[..hole]);
    let c = crc_update(c, b"00000000");
    !crc_update(c, &bytes[hole + 8..])
}

fn corrupt(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!(
        "{} is not a valid fyp_core model file: {what}",
        path.display()
    ))
}

fn json_list<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    format!("[{}]", items.iter().map(f).collect::<Vec<_>>().join(","))
}

/// Serialises `m` to bytes (see the module docs for the layout).
pub fn to_bytes(m: &Mlp) -> Vec<u8> {
    let tensors: Vec<(String, &DenseLayer)> = m
        .cross_layers()
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("cross.{i}"), l))
        .chain(
            m.layers()
                .iter()
                .enumerate()
                .map(|(i, l)| (format!("layers.{i}"), l)),
        )
        .collect();
    let meta = [
        ("format", FORMAT.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("version", m.version().to_string()),
        ("activation", m.activation().name().to_string()),
        ("outputs", json_list(m.outputs(), |o| quote(o.name()))),
        ("task_names", json_list(m.task_names(), |s| quote(s))),
        (
            "input_schema",
            json_list(m.input_schema(), |(n, w)| format!("[{},{w}]", quote(n))),
        ),
        ("n_cross", m.cross_layers().len().to_string()),
        ("n_layers", m.layers().len().to_string()),
    ];
    let mut header = String::from("{\"__metadata__\":{");
    for (k, v) in meta {
        header += &format!("{}:{},", quote(k), quote(&v));
    }
    header += "\"crc32\":\"00000000\"}";
    let mut off = 0usize;
    for (name, l) in &tensors {
        for (suffix, shape, len) in [
            (
                "weight",
                format!("[{},{}]", l.in_dim(), l.out_dim()),
                l.weight().len(),
            ),
            ("bias", format!("[{}]", l.out_dim()), l.bias().len()),
        ] {
            header += &format!(
                ",\"{name}.{suffix}\":{{\"dtype\":\"F32\",\"shape\":{shape},\"data_offsets\":[{off},{}]}}",
                off + 4 * len
            );
            off += 4 * len;
        }
    }
    header.push('}');
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + off);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for (_, l) in &tensors {
        for v in l.weight().iter().chain(l.bias()) {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let hole = find(&out[8..8 + header.len()], CRC_KEY).map(|p| 8 + p + CRC_KEY.len());
    let hole = hole.unwrap_or(0); // always present: written above
    let crc = file_crc(&out, hole);
    out[hole..hole + 8].copy_from_slice(format!("{crc:08x}").as_bytes());
    out
}

/// Writes atomically: a temporary file beside `path`, fsync, then rename.
pub fn save(m: &Mlp, path: &Path) -> Result<()> {
    let bytes = to_bytes(m);
    let tmp = path.with_extension(format!(
        "tmp.{}.{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io(format!("cannot write model file {}: {e}", path.display()))
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads and verifies a model file. Corruption (checksum, truncation, malformed header) is
/// [`Error::Corrupt`]; a well-formed file that describes an impossible model (e.g. an input
/// schema whose widths do not sum to the first layer's width) is [`Error::InvalidArgument`].
pub fn load(path: &Path, kernel: Option<Kernel>) -> Result<Mlp> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::Io(format!("cannot read model file {}: {e}", path.display())))?;
    from_bytes(&bytes, path, kernel)
}

pub fn from_bytes(bytes: &[u8], path: &Path, kernel: Option<Kernel>) -> Result<Mlp> {
    let c = |w: &dyn std::fmt::Display| corrupt(path, w);
    let (hlen, text) = verified_header(bytes, path)?;
    let h = json::parse(text).map_err(|e| c(&format!("header is not valid JSON: {e}")))?;
    let meta = Meta {
        meta: h.get("__metadata__").ok_or_else(|| c(&"no __metadata__"))?,
        path,
    };
    meta.check_format()?;
    let outputs = strings(&meta.sub("outputs")?, "outputs", path)?
        .iter()
        .map(|s| OutputTransform::parse(s).map_err(|e| c(&e)))
        .collect::<Result<Vec<_>>>()?;
    let task_names = strings(&meta.sub("task_names")?, "task_names", path)?;
    let schema = meta.input_schema()?;
    let activation = Activation::parse(meta.field("activation")?).map_err(|e| c(&e))?;
    let mut tensors = Tensors {
        header: &h,
        data: &bytes[8 + hlen..],
        used: 0,
        path,
    };
    let cross = tensors.layers("cross", meta.count("n_cross")?)?;
    let layers = tensors.layers("layers", meta.count("n_layers")?)?;
    tensors.check_all_used()?;
    check_schema_width(&schema, &cross, &layers, path)?;
    Mlp::new(MlpConfig {
        layers,
        cross,
        activation,
        outputs: Some(outputs),
        task_names: Some(task_names),
        version: meta.field("version")?.to_string(),
        input_schema: Some(schema),
        task_weights: None,
        kernel,
    })
}

/// Checks the header length and the file's CRC, and returns the header length and its text.
fn verified_header<'b>(bytes: &'b [u8], path: &Path) -> Result<(usize, &'b str)> {
    let c = |w: &dyn std::fmt::Display| corrupt(path, w);
    if bytes.len() < 8 {
        return Err(c(&"shorter than its 8-byte header length"));
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
    if hlen > (bytes.len() - 8) as u64 {
        return Err(c(&"truncated (header length exceeds the file size)"));
    }
    let hlen = hlen as usize;
    let hbytes = &bytes[8..8 + hlen];
    let hole = find(hbytes, CRC_KEY)
        .map(|p| 8 + p + CRC_KEY.len())
        .filter(|h| h + 8 <= 8 + hlen)
        .ok_or_else(|| c(&"no crc32 in the header (not written by fyp_core?)"))?;
    let stored = std::str::from_utf8(&bytes[hole..hole + 8])
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok())
        .ok_or_else(|| c(&"malformed crc32"))?;
    let actual = file_crc(bytes, hole);
    if stored != actual {
        return Err(c(&format!(
            "checksum mismatch (stored {stored:08x}, computed {actual:08x}): the file is truncated or corrupted"
        )));
    }
    let text = std::str::from_utf8(hbytes).map_err(|_| c(&"header is not UTF-8"))?;
    Ok((hlen, text))
}

/// The header's `__metadata__` object (all values are strings).
struct Meta<'a> {
    meta: &'a Json,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    /// The string value of `k`.
    fn field(&self, k: &str) -> Result<&'a str> {
        self.meta
            .get(k)
            .and_then(Json::as_str)
            .ok_or_else(|| corrupt(self.path, format!("metadata has no string {k:?}")))
    }

    /// The value of `k` parsed as JSON.
    fn sub(&self, k: &str) -> Result<Json> {
        json::parse(self.field(k)?)
            .map_err(|e| corrupt(self.path, format!("metadata {k:?} is not valid JSON: {e}")))
    }

    /// The value of `k` parsed as a count.
    fn count(&self, k: &str) -> Result<usize> {
        self.field(k)?
            .parse()
            .map_err(|_| corrupt(self.path, format!("metadata {k:?} is not a count")))
    }

    /// Refuses other formats and format versions.
    fn check_format(&self) -> Result<()> {
        if self.field("format")? != FORMAT {
            return Err(corrupt(
                self.path,
                format!("format is {:?}, expected {FORMAT:?}", self.field("format")?),
            ));
        }
        if self.field("format_version")? != FORMAT_VERSION {
            return Err(corrupt(
                self.path,
                format!(
                    "format_version {:?} is not supported (this build reads {FORMAT_VERSION})",
                    self.field("format_version")?
                ),
            ));
        }
        Ok(())
    }

    /// The `input_schema`: `[name, width]` pairs.
    fn input_schema(&self) -> Result<Vec<(String, usize)>> {
        let c = |w: &dyn std::fmt::Display| corrupt(self.path, w);
        let schema_json = self.sub("input_schema")?;
        let mut schema = vec![];
        for e in schema_json
            .as_arr()
            .ok_or_else(|| c(&"input_schema is not a list"))?
        {
            let pair = e.as_arr().filter(|p| p.len() == 2);
            let (n, w) = pair
                .and_then(|p| Some((p[0].as_str()?.to_owned(), p[1].as_usize()?)))
                .ok_or_else(|| c(&"input_schema entries must be [name, width]"))?;
            schema.push((n, w));
        }
        Ok(schema)
    }
}

/// The list of strings `v` (named `k` in errors).
fn strings(v: &Json, k: &str, path: &Path) -> Result<Vec<String>> {
    v.as_arr()
        .ok_or_else(|| corrupt(path, format!("{k} is not a list")))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| corrupt(path, format!("{k} holds a non-string")))
        })
        .collect()
}

/// Reads the tensors the header describes from the data section, tracking how much of it they
/// cover.
struct Tensors<'a> {
    header: &'a Json,
    data: &'a [u8],
    /// The end of the furthest tensor read so far.
    used: usize,
    path: &'a Path,
}

impl Tensors<'_> {
    /// The F32 tensor `name`, which must have `shape`.
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let c = |w: &dyn std::fmt::Display| corrupt(self.path, w);
        let t = self
            .header
            .get(name)
            .ok_or_else(|| c(&format!("tensor {name:?} is missing")))?;
        if t.get("dtype").and_then(Json::as_str) != Some("F32") {
            return Err(c(&format!("tensor {name:?} is not F32")));
        }
        let got: Option<Vec<usize>> = t
            .get("shape")
            .and_then(Json::as_arr)
            .map(|a| a.iter().filter_map(Json::as_usize).collect());
        if got.as_deref() != Some(shape) {
            return Err(c(&format!(
                "tensor {name:?} has shape {got:?}, expected {shape:?}"
            )));
        }
        let offs: Vec<usize> = t
            .get("data_offsets")
            .and_then(Json::as_arr)
            .map(|a| a.iter().filter_map(Json::as_usize).collect())
            .unwrap_or_default();
        let n: usize = shape.iter().product();
        if offs.len() != 2
            || offs[1] < offs[0]
            || offs[1] - offs[0] != 4 * n
            || offs[1] > self.data.len()
        {
            return Err(c(&format!("tensor {name:?} has bad data_offsets {offs:?}")));
        }
        self.used = self.used.max(offs[1]);
        Ok(self.data[offs[0]..offs[1]]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The shape of the 2-D tensor `name`.
    fn shape_of(&self, name: &str) -> Result<(usize, usize)> {
        let s: Option<Vec<usize>> = self
            .header
            .get(name)
            .and_then(|t| t.get("shape"))
            .and_then(Json::as_arr)
            .map(|a| a.iter().filter_map(Json::as_usize).collect());
        match s.as_deref() {
            Some([a, b]) => Ok((*a, *b)),
            _ => Err(corrupt(
                self.path,
                format!("tensor {name:?} is missing or not 2-D"),
            )),
        }
    }

    /// The `count` dense layers `{prefix}.{i}.weight|bias`.
    fn layers(&mut self, prefix: &str, count: usize) -> Result<Vec<LayerSpec>> {
        (0..count)
            .map(|i| {
                let (k, m) = self.shape_of(&format!("{prefix}.{i}.weight"))?;
                Ok(LayerSpec {
                    weight: self.tensor(&format!("{prefix}.{i}.weight"), &[k, m])?,
                    in_dim: k,
                    out_dim: m,
                    bias: self.tensor(&format!("{prefix}.{i}.bias"), &[m])?,
                })
            })
            .collect()
    }

    /// Refuses bytes after the last tensor.
    fn check_all_used(&self) -> Result<()> {
        if self.used != self.data.len() {
            return Err(corrupt(
                self.path,
                format!(
                    "{} trailing bytes after the tensors",
                    self.data.len() - self.used
                ),
            ));
        }
        Ok(())
    }
}

/// The input schema's widths must sum to the model's input width.
fn check_schema_width(
    schema: &[(String, usize)],
    cross: &[LayerSpec],
    layers: &[LayerSpec],
    path: &Path,
) -> Result<()> {
    let d = cross
        .first()
        .or(layers.first())
        .map(|l| l.in_dim)
        .unwrap_or(0);
    let total: usize = schema.iter().map(|(_, w)| w).sum();
    if total != d {
        return Err(Error::InvalidArgument(format!(
            "model file {}: input_schema widths sum to {total}, but the model's input width is {d}",
            path.display()
        )));
    }
    Ok(())
}

impl Mlp {
    /// Writes the model file (atomically); see [`crate::rank::model_file`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        save(self, path.as_ref())
    }

    /// Reads a model file written by [`Mlp::save`]; `kernel` defaults to [`Kernel::best`].
    pub fn load(path: impl AsRef<Path>, kernel: Option<Kernel>) -> Result<Mlp> {
        load(path.as_ref(), kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Mlp {
        let l = |k: usize, m: usize| LayerSpec {
            weight: (0..k * m).map(|i| (i as f32 * 0.37).sin()).collect(),
            in_dim: k,
            out_dim: m,
            bias: (0..m).map(|i| i as f32 * 0.1).collect(),
        };
        let mut cfg = MlpConfig::new(vec![l(5, 7), l(7, 2)], "v\"1");
        cfg.cross = vec![l(5, 5)];
        cfg.outputs = Some(vec![OutputTransform::Sigmoid, OutputTransform::Softplus]);
        cfg.task_names = Some(vec!["p_like".into(), "watch".into()]);
        cfg.input_schema = Some(vec![("user".into(), 2), ("item".into(), 3)]);
        Mlp::new(cfg).unwrap()
    }

    #[test]
    fn crc_matches_zlib() {
        assert_eq!(!crc_update(!0, b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trip_and_corruption() {
        let m = model();
        let bytes = to_bytes(&m);
        let p = Path::new("mem");
        let back = from_bytes(&bytes, p, None).unwrap();
        assert_eq!(back.version(), "v\"1");
        assert_eq!(back.task_names(), m.task_names());
        assert_eq!(back.input_schema(), m.input_schema());
        let x: Vec<f32> = (0..15).map(|i| i as f32 * 0.1).collect();
        assert_eq!(back.predict(&x, 3).unwrap(), m.predict(&x, 3).unwrap());
        for cut in [0, 7, 8, 40, bytes.len() - 1] {
            assert!(
                matches!(from_bytes(&bytes[..cut], p, None), Err(Error::Corrupt(_))),
                "cut {cut}"
            );
        }
        for pos in [3, 20, 100, bytes.len() - 3] {
            let mut b = bytes.clone();
            b[pos] ^= 0x10;
            assert!(
                matches!(from_bytes(&b, p, None), Err(Error::Corrupt(_))),
                "flip {pos}"
            );
        }
    }
}
