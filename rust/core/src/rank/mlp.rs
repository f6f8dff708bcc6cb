//! The dense multi-task MLP (`fyp_core.MlpRanker`): optional DCN-v2 cross layers, hidden layers,
//! a linear last layer and per-task output transforms, evaluated block by block.
//!
//! A block of [`RB`] candidates runs through every layer before the next block starts, so its
//! activations stay in L1/L2 and each layer's weights stream from L2 once per block.

use std::sync::Arc;

use parking_lot::RwLock;

use super::act::{self, Activation, OutputTransform};
use super::gemm::{self, Epi, Kernel, NR, RB};
use super::scratch::{with_scratch, AlignedBuf};
use crate::{invalid, Result};

/// One dense layer as given: `weight` is row-major `(in_dim, out_dim)`.
#[derive(Clone, Debug)]
pub struct LayerSpec {
    pub weight: Vec<f32>,
    pub in_dim: usize,
    pub out_dim: usize,
    pub bias: Vec<f32>,
}

/// Everything that defines a model. `None` fields take documented defaults.
#[derive(Clone, Debug)]
pub struct MlpConfig {
    /// Hidden layers then the (linear) output layer; at least one.
    pub layers: Vec<LayerSpec>,
    /// DCN-v2 cross layers in front of the MLP, each `(d, d)`: `x_{l+1} = x0 * (x_l W + b) + x_l`.
    pub cross: Vec<LayerSpec>,
    pub activation: Activation,
    /// One per task; default all identity.
    pub outputs: Option<Vec<OutputTransform>>,
    /// One per task; default `task_0, task_1, ...`.
    pub task_names: Option<Vec<String>>,
    pub version: String,
    /// `(name, width)` blocks of the input vector; widths sum to the input width.
    /// Default: one block `("features", d)`.
    pub input_schema: Option<Vec<(String, usize)>>,
    /// Value-model weights, one per task; default all 1.
    pub task_weights: Option<Vec<f32>>,
    /// Default: [`Kernel::best`].
    pub kernel: Option<Kernel>,
}

impl MlpConfig {
    pub fn new(layers: Vec<LayerSpec>, version: impl Into<String>) -> Self {
        Self {
            layers,
            cross: vec![],
            activation: Activation::Relu,
            outputs: None,
            task_names: None,
            version: version.into(),
            input_schema: None,
            task_weights: None,
            kernel: None,
        }
    }
}

/// A layer with its weights packed for the tile kernels.
pub struct DenseLayer {
    spec: LayerSpec,
    packed: AlignedBuf,
    bias_pad: AlignedBuf,
}

impl DenseLayer {
    fn new(spec: LayerSpec, what: &str) -> Result<Self> {
        let (k, m) = (spec.in_dim, spec.out_dim);
        if k == 0 || m == 0 {
            return Err(invalid!(
                "{what} has shape ({k}, {m}); both dimensions must be > 0"
            ));
        }
        if spec.weight.len() != k * m {
            return Err(invalid!(
                "{what} weight has {} values, shape ({k}, {m}) needs {}",
                spec.weight.len(),
                k * m
            ));
        }
        if spec.bias.len() != m {
            return Err(invalid!(
                "{what} bias has {} values, the layer has {m} outputs",
                spec.bias.len()
            ));
        }
        if let Some(i) = spec.weight.iter().position(|v| !v.is_finite()) {
            return Err(invalid!(
                "{what} weight[{}, {}] is {}; weights must be finite",
                i / m,
                i % m,
                spec.weight[i]
            ));
        }
        if let Some(i) = spec.bias.iter().position(|v| !v.is_finite()) {
            return Err(invalid!(
                "{what} bias[{i}] is {}; biases must be finite",
                spec.bias[i]
            ));
        }
        let packed = AlignedBuf::from_slice(&gemm::pack_panels(&spec.weight, k, m));
        let mut bias_pad = AlignedBuf::zeroed(m.div_ceil(NR) * NR);
        bias_pad.as_mut_slice()[..m].copy_from_slice(&spec.bias);
        Ok(Self {
            spec,
            packed,
            bias_pad,
        })
    }

    pub fn in_dim(&self) -> usize {
        self.spec.in_dim
    }
    pub fn out_dim(&self) -> usize {
        self.spec.out_dim
    }
    /// Row-major `(in_dim, out_dim)`.
    pub fn weight(&self) -> &[f32] {
        &self.spec.weight
    }
    pub fn bias(&self) -> &[f32] {
        &self.spec.bias
    }
    fn panels(&self) -> usize {
        self.spec.out_dim.div_ceil(NR)
    }
    fn m_pad(&self) -> usize {
        self.panels() * NR
    }
}

/// How a block's first layer gets its input.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// `n x d` row-major features.
    Dense(&'a [f32]),
    /// One user vector (first `user.len()` inputs) and `n x di` item rows.
    Request { user: &'a [f32], items: &'a [f32] },
}

enum Step {
    Act,
    Linear,
    Cross { x0: *const f32 },
}

/// The dense multi-task ranker. Immutable except for the value-model task weights; `Send + Sync`.
pub struct Mlp {
    version: String,
    activation: Activation,
    outputs: Vec<OutputTransform>,
    task_names: Vec<String>,
    input_schema: Vec<(String, usize)>,
    cross: Vec<DenseLayer>,
    layers: Vec<DenseLayer>,
    kernel: Kernel,
    d: usize,
    d_pad: usize,
    widest: usize,
    task_weights: RwLock<Arc<Vec<f32>>>,
}

fn check_finite(what: &str, v: &[f32], cols: usize) -> Result<()> {
    if v.iter().all(|x| x.is_finite()) {
        return Ok(());
    }
    let i = v.iter().position(|x| !x.is_finite()).unwrap_or(0);
    let cols = cols.max(1);
    Err(invalid!(
        "{what}[{}, {}] is {}; features must be finite (impute missing values before scoring)",
        i / cols,
        i % cols,
        v[i]
    ))
}

/// Packs the cross layers, each of which must be `(d, d)`.
fn build_cross(specs: Vec<LayerSpec>, d: usize) -> Result<Vec<DenseLayer>> {
    let mut cross = Vec::with_capacity(specs.len());
    for (i, c) in specs.into_iter().enumerate() {
        if c.in_dim != d || c.out_dim != d {
            return Err(invalid!(
                "cross layer {i} has shape ({}, {}); cross layers must be ({d}, {d})",
                c.in_dim,
                c.out_dim
            ));
        }
        cross.push(DenseLayer::new(c, &format!("cross layer {i}"))?);
    }
    Ok(cross)
}

/// Packs the dense layers, each of which must take the previous one's outputs (the first `d`);
/// also returns the last layer's width (the number of tasks).
fn build_layers(specs: Vec<LayerSpec>, d: usize) -> Result<(Vec<DenseLayer>, usize)> {
    let mut layers = Vec::with_capacity(specs.len());
    let mut prev = d;
    for (i, l) in specs.into_iter().enumerate() {
        if l.in_dim != prev {
            return Err(invalid!(
                "weights[{i}] has {} input rows, the previous layer has {prev} outputs",
                l.in_dim
            ));
        }
        prev = l.out_dim;
        layers.push(DenseLayer::new(l, &format!("layer {i}"))?);
    }
    Ok((layers, prev))
}

/// The task names (`task_{t}` by default): one per task, non-empty and unique.
fn checked_task_names(names: Option<Vec<String>>, tasks: usize) -> Result<Vec<String>> {
    let task_names = names.unwrap_or_else(|| (0..tasks).map(|t| format!("task_{t}")).collect());
    if task_names.len() != tasks {
        return Err(invalid!(
            "task_names has {} names, the model has {tasks} tasks",
            task_names.len()
        ));
    }
    for (i, n) in task_names.iter().enumerate() {
        if n.is_empty() || task_names[..i].contains(n) {
            return Err(invalid!(
                "task names must be non-empty and unique, got {n:?} twice or empty"
            ));
        }
    }
    Ok(task_names)
}

/// The input schema (one `features` block by default): widths summing to `d`, unique non-empty
/// names, widths > 0.
fn checked_input_schema(
    schema: Option<Vec<(String, usize)>>,
    d: usize,
) -> Result<Vec<(String, usize)>> {
    let input_schema = schema.unwrap_or_else(|| vec![("features".into(), d)]);
    let total: usize = input_schema.iter().map(|(_, w)| w).sum();
    if total != d {
        return Err(invalid!(
            "input_schema widths sum to {total}, the model's input width is {d}"
        ));
    }
    for (i, (n, w)) in input_schema.iter().enumerate() {
        if n.is_empty() || *w == 0 || input_schema[..i].iter().any(|(m, _)| m == n) {
            return Err(invalid!(
                "input_schema entries need unique non-empty names and widths > 0, got ({n:?}, {w})"
            ));
        }
    }
    Ok(input_schema)
}

/// The GEMM kernel (the best this CPU has by default), which the CPU must support.
fn checked_kernel(kernel: Option<Kernel>) -> Result<Kernel> {
    let kernel = kernel.unwrap_or_else(Kernel::best);
    if !kernel.available() {
        return Err(invalid!(
            "kernel {:?} is not supported by this CPU",
            kernel.name()
        ));
    }
    Ok(kernel)
}

impl Mlp {
    pub fn new(cfg: MlpConfig) -> Result<Self> {
        if cfg.layers.is_empty() {
            return Err(invalid!(
                "an MLP needs at least one layer (weights is empty)"
            ));
        }
        if cfg.version.is_empty() {
            return Err(invalid!("version must be a non-empty string"));
        }
        let d = cfg.cross.first().unwrap_or(&cfg.layers[0]).in_dim;
        let cross = build_cross(cfg.cross, d)?;
        let (layers, tasks) = build_layers(cfg.layers, d)?;
        let outputs = cfg
            .outputs
            .unwrap_or_else(|| vec![OutputTransform::Identity; tasks]);
        if outputs.len() != tasks {
            return Err(invalid!(
                "outputs has {} transforms, the model has {tasks} tasks (last layer outputs)",
                outputs.len()
            ));
        }
        let task_names = checked_task_names(cfg.task_names, tasks)?;
        let input_schema = checked_input_schema(cfg.input_schema, d)?;
        let task_weights = cfg.task_weights.unwrap_or_else(|| vec![1.0; tasks]);
        check_task_weights(&task_weights, tasks)?;
        let kernel = checked_kernel(cfg.kernel)?;
        let d_pad = d.div_ceil(NR) * NR;
        let widest = layers
            .iter()
            .map(|l| l.m_pad())
            .max()
            .unwrap_or(0)
            .max(d_pad);
        Ok(Self {
            version: cfg.version,
            activation: cfg.activation,
            outputs,
            task_names,
            input_schema,
            cross,
            layers,
            kernel,
            d,
            d_pad,
            widest,
            task_weights: RwLock::new(Arc::new(task_weights)),
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }
    pub fn input_dim(&self) -> usize {
        self.d
    }
    pub fn n_tasks(&self) -> usize {
        self.outputs.len()
    }
    pub fn task_names(&self) -> &[String] {
        &self.task_names
    }
    pub fn outputs(&self) -> &[OutputTransform] {
        &self.outputs
    }
    pub fn activation(&self) -> Activation {
        self.activation
    }
    pub fn input_schema(&self) -> &[(String, usize)] {
        &self.input_schema
    }
    pub fn layers(&self) -> &[DenseLayer] {
        &self.layers
    }
    pub fn cross_layers(&self) -> &[DenseLayer] {
        &self.cross
    }
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Multiply-adds per candidate (dense path), for GFLOP/s reports.
    pub fn flops_per_row(&self) -> usize {
        self.cross
            .iter()
            .chain(&self.layers)
            .map(|l| 2 * l.in_dim() * l.out_dim())
            .sum()
    }

    /// The same model with another kernel (weights shared by copy; for tests and benchmarks).
    pub fn with_kernel(&self, kernel: Kernel) -> Result<Self> {
        let strip = |l: &DenseLayer| l.spec.clone();
        Self::new(MlpConfig {
            layers: self.layers.iter().map(strip).collect(),
            cross: self.cross.iter().map(strip).collect(),
            activation: self.activation,
            outputs: Some(self.outputs.clone()),
            task_names: Some(self.task_names.clone()),
            version: self.version.clone(),
            input_schema: Some(self.input_schema.clone()),
            task_weights: Some(self.task_weights().to_vec()),
            kernel: Some(kernel),
        })
    }

    /// Scores `n` candidates: `x` is `n x input_dim` row-major, `out` receives `n x n_tasks`.
    /// Allocates nothing after the calling thread's first call. `n == 0` is valid (no-op).
    pub fn predict_into(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        if x.len() != n * self.d {
            return Err(invalid!(
                "features has {} values, {n} rows x {} inputs needs {}",
                x.len(),
                self.d,
                n * self.d
            ));
        }
        check_finite("features", x, self.d)?;
        self.run(Input::Dense(x), n, out)
    }

    /// Allocating convenience over [`Mlp::predict_into`].
    pub fn predict(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0; n * self.n_tasks()];
        self.predict_into(x, n, &mut out)?;
        Ok(out)
    }

    /// Scores `n` candidates of one request whose first `user.len()` inputs are shared: equal
    /// (bit for bit) to `predict_into` on `[user, items[i]]` rows, with the user part of the first
    /// layer computed once. `items` is `n x (input_dim - user.len())` row-major.
    pub fn predict_request_into(
        &self,
        user: &[f32],
        items: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let du = user.len();
        if du > self.d {
            return Err(invalid!(
                "user_features has {du} values, the model has only {} inputs",
                self.d
            ));
        }
        let di = self.d - du;
        if items.len() != n * di {
            return Err(invalid!(
                "item_features has {} values, {n} rows x {di} item inputs needs {} (model inputs {} = {du} user + {di} item)",
                items.len(),
                n * di,
                self.d
            ));
        }
        check_finite("user_features", user, du)?;
        check_finite("item_features", items, di)?;
        if du == 0 {
            return self.run(Input::Dense(items), n, out);
        }
        self.run(Input::Request { user, items }, n, out)
    }

    pub fn predict_request(&self, user: &[f32], items: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut out = vec![0.0; n * self.n_tasks()];
        self.predict_request_into(user, items, n, &mut out)?;
        Ok(out)
    }

    /// The current value-model weights (one per task).
    pub fn task_weights(&self) -> Arc<Vec<f32>> {
        self.task_weights.read().clone()
    }

    /// Replaces the value-model weights; takes effect for the next `value` call, no reload.
    pub fn set_task_weights(&self, w: Vec<f32>) -> Result<()> {
        check_task_weights(&w, self.n_tasks())?;
        *self.task_weights.write() = Arc::new(w);
        Ok(())
    }

    /// `out[i] = sum_t w_t * preds[i, t]` with the current task weights.
    pub fn value_into(&self, preds: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        let w = self.task_weights();
        value_with(preds, n, &w, out)
    }

    fn run(&self, input: Input<'_>, n: usize, out: &mut [f32]) -> Result<()> {
        let tasks = self.n_tasks();
        if out.len() != n * tasks {
            return Err(invalid!(
                "output buffer has {} values, {n} rows x {tasks} tasks needs {}",
                out.len(),
                n * tasks
            ));
        }
        if n == 0 {
            return Ok(());
        }
        let blk = self.widest * RB;
        let m0_pad = self.layers[0].m_pad();
        let len = 3 * blk + m0_pad.div_ceil(16) * 16;
        with_scratch(len, |s| {
            let (bufs, pre) = s.split_at_mut(3 * blk);
            let split = self.split_prefix(input, pre, m0_pad);
            let base = bufs.as_mut_ptr();
            let mut row0 = 0;
            while row0 < n {
                let rows = (n - row0).min(RB);
                // SAFETY: the three block buffers are `widest * RB` floats each, disjoint and
                // inside the scratch slice; every pointer below stays within them.
                unsafe {
                    let buf = |i: usize| base.add(i * blk);
                    self.pack(input, row0, rows, split.is_some(), buf(0));
                    // Buffer 0 holds the input (x0 of the cross layers); 1 and 2 ping-pong.
                    let mut cur = 0usize;
                    for c in &self.cross {
                        let o = if cur == 1 { 2 } else { 1 };
                        let bias = c.bias_pad.as_slice().as_ptr();
                        let step = Step::Cross { x0: buf(0) };
                        self.layer(c, 0, self.d, buf(cur), buf(o), bias, rows, step);
                        cur = o;
                    }
                    let last = self.layers.len() - 1;
                    for (i, l) in self.layers.iter().enumerate() {
                        let o = if cur == 1 { 2 } else { 1 };
                        let (k_off, k, bias) = match split {
                            Some(du) if i == 0 => (du, self.d - du, pre.as_ptr()),
                            _ => (0, l.in_dim(), l.bias_pad.as_slice().as_ptr()),
                        };
                        let step = if i == last { Step::Linear } else { Step::Act };
                        self.layer(l, k_off, k, buf(cur), buf(o), bias, rows, step);
                        cur = o;
                    }
                    let cur = buf(cur);
                    let res = std::slice::from_raw_parts_mut(cur, tasks * RB);
                    for (t, o) in self.outputs.iter().enumerate() {
                        act::apply_output(self.kernel, *o, &mut res[t * RB..t * RB + rows]);
                    }
                    for r in 0..rows {
                        let dst = &mut out[(row0 + r) * tasks..(row0 + r + 1) * tasks];
                        for t in 0..tasks {
                            dst[t] = res[t * RB + r];
                        }
                    }
                }
                row0 += rows;
            }
        });
        Ok(())
    }

    /// The split first layer: writes prefix = b0 + user . W0[:du] (zero-padded to `m0_pad`)
    /// into `pre`, once per request, and returns `du`; `None` when the first layer is not split
    /// (dense input, or cross layers first).
    fn split_prefix(&self, input: Input<'_>, pre: &mut [f32], m0_pad: usize) -> Option<usize> {
        match input {
            Input::Request { user, .. } if self.cross.is_empty() => {
                let l0 = &self.layers[0];
                let m = l0.out_dim();
                pre[m..m0_pad].fill(0.0);
                gemm::prefix_bias(
                    self.kernel,
                    user,
                    &l0.weight()[..user.len() * m],
                    m,
                    l0.bias(),
                    pre,
                );
                Some(user.len())
            }
            _ => None,
        }
    }

    /// Writes the block's input features-major into `dst` (`[feature][RB]`), zero-padded to
    /// `d_pad` features and `RB` rows. With `split`, only the item part (first-layer rows
    /// `du..d`) is packed, starting at feature 0.
    unsafe fn pack(&self, input: Input<'_>, row0: usize, rows: usize, split: bool, dst: *mut f32) {
        let dst = std::slice::from_raw_parts_mut(dst, self.d_pad * RB);
        let (src, cols, off) = match input {
            Input::Dense(x) => (x, self.d, 0),
            Input::Request { user, items } => {
                if split {
                    (items, self.d - user.len(), 0)
                } else {
                    for (c, &u) in user.iter().enumerate() {
                        dst[c * RB..c * RB + RB].fill(u);
                    }
                    (items, self.d - user.len(), user.len())
                }
            }
        };
        transpose_in(
            &src[row0 * cols..(row0 + rows) * cols],
            rows,
            cols,
            &mut dst[off * RB..],
        );
        let used = off + cols;
        if rows < RB {
            for c in 0..used {
                dst[c * RB + rows..c * RB + RB].fill(0.0);
            }
        }
        dst[used * RB..].fill(0.0);
    }

    /// One layer over one block: `out[j][r] = step(bias[j] + sum_k x[k][r] * W[k_off + k][j])`.
    unsafe fn layer(
        &self,
        l: &DenseLayer,
        k_off: usize,
        k: usize,
        x: *const f32,
        out: *mut f32,
        bias: *const f32,
        rows: usize,
        step: Step,
    ) {
        let w = l.packed.as_slice().as_ptr();
        let kin = l.in_dim();
        let fuse_relu = self.activation == Activation::Relu;
        for p in 0..l.panels() {
            let wp = w.add((p * kin + k_off) * NR);
            let o = out.add(p * NR * RB);
            let epi = match step {
                Step::Linear => Epi::Linear,
                Step::Act if fuse_relu => Epi::Relu,
                Step::Act => Epi::Linear,
                Step::Cross { x0 } => Epi::Cross {
                    x0: x0.add(p * NR * RB),
                    xl: x.add(p * NR * RB),
                },
            };
            let cols = (l.out_dim() - p * NR).min(NR);
            gemm::tile(self.kernel, rows, cols, k, x, wp, bias.add(p * NR), o, epi);
            if matches!(step, Step::Act) && !fuse_relu {
                let t = std::slice::from_raw_parts_mut(o, cols * RB);
                act::apply(self.kernel, self.activation, t);
            }
        }
    }
}

/// `dst[c * RB + r] = src[r * cols + c]` for `r < rows`, in 8 x 8 tiles for cache friendliness.
fn transpose_in(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const T: usize = 8;
    let mut c0 = 0;
    while c0 < cols {
        let c1 = (c0 + T).min(cols);
        for r in 0..rows {
            let s = &src[r * cols + c0..r * cols + c1];
            for (i, &v) in s.iter().enumerate() {
                dst[(c0 + i) * RB + r] = v;
            }
        }
        c0 = c1;
    }
}

fn check_task_weights(w: &[f32], tasks: usize) -> Result<()> {
    if w.len() != tasks {
        return Err(invalid!(
            "task weights has {} values, the model has {tasks} tasks",
            w.len()
        ));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(invalid!(
            "task weight {i} is {}; weights must be finite",
            w[i]
        ));
    }
    Ok(())
}

/// `out[i] = sum_t weights[t] * preds[i, t]`; `preds` is `n x weights.len()` row-major.
pub fn value_with(preds: &[f32], n: usize, weights: &[f32], out: &mut [f32]) -> Result<()> {
    let t = weights.len();
    if preds.len() != n * t || out.len() != n {
        return Err(invalid!(
            "preds has {} values and out {}, expected {n} x {t} tasks and {n}",
            preds.len(),
            out.len()
        ));
    }
    for (o, row) in out.iter_mut().zip(preds.chunks_exact(t.max(1))) {
        *o = row.iter().zip(weights).map(|(p, w)| p * w).sum();
    }
    Ok(())
}
