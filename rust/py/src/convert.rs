//! Conversions from Python arguments to the plain slices the core takes. Arrays of the right
//! dtype and layout are borrowed without a copy; anything else numeric is converted once through
//! numpy; anything that cannot be converted raises TypeError/ValueError naming the argument.

use numpy::{
    PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyList, PyString, PyTuple};

fn numpy_as<'py>(obj: &Bound<'py, PyAny>, dtype: &str, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let kind: Option<String> = obj
        .getattr("dtype")
        .and_then(|d| d.getattr("kind"))
        .and_then(|k| k.extract())
        .ok();
    if let Some(kind) = kind {
        if !matches!(kind.as_str(), "f" | "i" | "u" | "b") {
            return Err(PyTypeError::new_err(format!(
                "{name} must be a numeric array convertible to {dtype}, got dtype kind {kind:?}"
            )));
        }
    }
    np.call_method1("ascontiguousarray", (obj, dtype))
        .map_err(|e| {
            PyTypeError::new_err(format!(
                "{name} must be convertible to a {dtype} array: {e}"
            ))
        })
}

/// A C-contiguous float32 matrix; other numeric dtypes or layouts are converted (one copy).
/// A 1-D array is taken as a single row.
pub fn f32_matrix<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray2<'py, f32>> {
    if let Ok(a) = obj.cast::<PyArray2<f32>>() {
        if a.is_c_contiguous() {
            return Ok(a.readonly());
        }
    }
    let conv = numpy_as(obj, "float32", name)?;
    let ndim: usize = conv.getattr("ndim")?.extract()?;
    let conv = match ndim {
        2 => conv,
        1 => conv.call_method1("reshape", ((1i64, -1i64),))?,
        _ => {
            return Err(PyValueError::new_err(format!(
                "{name} must be a 2-D array (rows x dim), got {ndim} dimensions"
            )))
        }
    };
    Ok(conv.cast_into::<PyArray2<f32>>()?.readonly())
}

/// A contiguous 1-D float32 vector (converted when needed).
pub fn f32_vector<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, f32>> {
    if let Ok(a) = obj.cast::<PyArray1<f32>>() {
        if a.is_c_contiguous() {
            return Ok(a.readonly());
        }
    }
    let conv = numpy_as(obj, "float32", name)?;
    let ndim: usize = conv.getattr("ndim")?.extract()?;
    if ndim != 1 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 1-D array, got {ndim} dimensions"
        )));
    }
    Ok(conv.cast_into::<PyArray1<f32>>()?.readonly())
}

/// Longest list or tuple of ints `small_ints` converts without numpy.
const SMALL_INTS: usize = 64;

/// A Python int, or a list or tuple of at most `SMALL_INTS` ints, as a vector without the
/// numpy round trip (five numpy calls, ~35 us: a tenth of an online insert's `add([id], row)`);
/// `None` for anything else, which the numpy path then converts or refuses with its message.
fn small_ints<T: TryFrom<i64>>(
    obj: &Bound<'_, PyAny>,
    unsigned: bool,
    name: &str,
) -> PyResult<Option<Vec<T>>> {
    let one = |x: &Bound<'_, PyAny>| -> PyResult<Option<T>> {
        let Some(v) = x
            .is_instance_of::<PyInt>()
            .then(|| x.extract::<i64>().ok())
            .flatten()
        else {
            return Ok(None);
        };
        if unsigned && v < 0 {
            return Err(PyValueError::new_err(format!(
                "{name} must be non-negative ids"
            )));
        }
        Ok(T::try_from(v).ok())
    };
    let items: Vec<Bound<'_, PyAny>> = if let Ok(l) = obj.cast::<PyList>() {
        if l.len() > SMALL_INTS {
            return Ok(None);
        }
        l.iter().collect()
    } else if let Ok(t) = obj.cast::<PyTuple>() {
        if t.len() > SMALL_INTS {
            return Ok(None);
        }
        t.iter().collect()
    } else if obj.is_instance_of::<PyInt>() {
        vec![obj.clone()]
    } else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(items.len());
    for x in &items {
        match one(x)? {
            Some(v) => out.push(v),
            None => return Ok(None),
        }
    }
    Ok(Some(out))
}

macro_rules! int_vector {
    ($fn:ident, $t:ty, $dtype:literal) => {
        /// A contiguous 1-D integer vector; a Python int becomes a one-element vector. Negative
        /// values for an unsigned target raise ValueError (numpy would wrap them silently).
        pub fn $fn<'py>(
            obj: &Bound<'py, PyAny>,
            name: &str,
        ) -> PyResult<PyReadonlyArray1<'py, $t>> {
            if let Ok(a) = obj.cast::<PyArray1<$t>>() {
                if a.is_c_contiguous() {
                    return Ok(a.readonly());
                }
            }
            let py = obj.py();
            if let Some(v) = small_ints::<$t>(obj, $dtype.starts_with('u'), name)? {
                return Ok(PyArray1::from_vec(py, v).readonly());
            }
            let np = py.import("numpy")?;
            let arr = np.call_method1("asarray", (obj,))?;
            let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
            if !matches!(kind.as_str(), "i" | "u" | "b") {
                return Err(PyTypeError::new_err(format!(
                    "{name} must hold integers, got an array of dtype kind {kind:?}"
                )));
            }
            if $dtype == "uint64" && kind == "i" {
                let neg: bool = arr
                    .call_method1("__lt__", (0,))?
                    .call_method0("any")?
                    .extract()?;
                if neg {
                    return Err(PyValueError::new_err(format!(
                        "{name} must be non-negative ids"
                    )));
                }
            }
            let conv = np.call_method1("ascontiguousarray", (arr, $dtype))?;
            let conv = conv.call_method1("reshape", (-1i64,))?;
            let ndim: usize = np.call_method1("ndim", (obj,))?.extract()?;
            if ndim > 1 {
                return Err(PyValueError::new_err(format!(
                    "{name} must be 1-D, got {ndim} dimensions"
                )));
            }
            Ok(conv.cast_into::<PyArray1<$t>>()?.readonly())
        }
    };
}
int_vector!(i64_vector, i64, "int64");
int_vector!(u64_vector, u64, "uint64");
int_vector!(i32_vector, i32, "int32");

/// A contiguous 1-D float64 vector (converted when needed).
pub fn f64_vector<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, f64>> {
    if let Ok(a) = obj.cast::<PyArray1<f64>>() {
        if a.is_c_contiguous() {
            return Ok(a.readonly());
        }
    }
    let conv = numpy_as(obj, "float64", name)?;
    let ndim: usize = conv.getattr("ndim")?.extract()?;
    if ndim != 1 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 1-D array, got {ndim} dimensions"
        )));
    }
    Ok(conv.cast_into::<PyArray1<f64>>()?.readonly())
}

/// Either one string (broadcast) or one string per row.
pub enum StrArg {
    One(String),
    Many(Vec<String>),
}

impl StrArg {
    pub fn as_keys(&self) -> fyp_core::split::Keys<'_> {
        match self {
            StrArg::One(s) => fyp_core::split::Keys::One(s),
            StrArg::Many(v) => fyp_core::split::Keys::Many(v),
        }
    }
}

/// A `str`, or a list/tuple/array of `str` (numpy `U` and object arrays included).
pub fn str_arg(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<StrArg> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(StrArg::One(s.to_cow()?.into_owned()));
    }
    Ok(StrArg::Many(str_list(obj, name)?))
}

/// A sequence of `str`.
pub fn str_list(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Vec<String>> {
    let bad = |i: usize, e: &Bound<'_, PyAny>| {
        let t = e
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        PyTypeError::new_err(format!("{name}[{i}] must be str, got {t}"))
    };
    if let Ok(list) = obj.cast::<PyList>() {
        let mut out = Vec::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            out.push(
                e.cast::<PyString>()
                    .map_err(|_| bad(i, &e))?
                    .to_cow()?
                    .into_owned(),
            );
        }
        return Ok(out);
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        let mut out = Vec::with_capacity(t.len());
        for (i, e) in t.iter().enumerate() {
            out.push(
                e.cast::<PyString>()
                    .map_err(|_| bad(i, &e))?
                    .to_cow()?
                    .into_owned(),
            );
        }
        return Ok(out);
    }
    let iter = obj
        .try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a str or a sequence of str")))?;
    let mut out = Vec::new();
    for (i, e) in iter.enumerate() {
        let e = e?;
        match e.cast::<PyString>() {
            Ok(s) => out.push(s.to_cow()?.into_owned()),
            Err(_) => return Err(bad(i, &e)),
        }
    }
    Ok(out)
}

/// A contiguous 1-D bool vector (borrowed when it already is one) from bools or integers
/// (non-zero is true); a Python bool becomes a one-element vector.
pub fn bool_vector<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArray1<'py, bool>> {
    if let Ok(a) = obj.cast::<PyArray1<bool>>() {
        if a.is_c_contiguous() {
            return Ok(a.readonly());
        }
    }
    let np = obj.py().import("numpy")?;
    let arr = np.call_method1("asarray", (obj,))?;
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    if ndim > 1 {
        return Err(PyValueError::new_err(format!(
            "{name} must be a 1-D array, got {ndim} dimensions"
        )));
    }
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    let arr = match kind.as_str() {
        "b" => arr,
        "i" | "u" => arr.call_method1("__ne__", (0,))?,
        _ => {
            return Err(PyTypeError::new_err(format!(
                "{name} must hold bools, got an array of dtype kind {kind:?}"
            )))
        }
    };
    let conv = np
        .call_method1("ascontiguousarray", (arr, "bool"))?
        .call_method1("reshape", (-1i64,))?;
    Ok(conv.cast_into::<PyArray1<bool>>()?.readonly())
}

/// Any config object (dict / mapping, list / tuple / array, str, int, float, bool, None,
/// numpy scalars) as the core's config [`Value`](fyp_core::config::Value); the schemas are
/// parsed in the core. Nesting is bounded.
pub fn config_value(v: &Bound<'_, PyAny>, depth: usize) -> PyResult<fyp_core::config::Value> {
    use fyp_core::config::{Value, MAX_DEPTH};
    use pyo3::types::{PyBool, PyDict, PyFloat, PyString};
    if depth > MAX_DEPTH {
        return Err(PyValueError::new_err(format!(
            "config is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    if v.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(Value::Str(s.to_cow()?.into_owned()));
    }
    if v.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(v.is_truthy()?));
    }
    if v.is_instance_of::<PyFloat>() {
        return Ok(Value::Float(v.extract()?));
    }
    if let Ok(i) = v.extract::<i128>() {
        return Ok(Value::Int(i));
    }
    if let Ok(f) = v.extract::<f64>() {
        return Ok(Value::Float(f));
    }
    let items = match v.cast::<PyDict>() {
        Ok(d) => Some(d.items().into_any()),
        Err(_) => v.call_method0("items").ok(),
    };
    if let Some(items) = items {
        let mut m = Vec::new();
        for kv in items.try_iter()? {
            let (k, val): (Bound<'_, PyAny>, Bound<'_, PyAny>) = kv?.extract()?;
            m.push((config_value(&k, depth + 1)?, config_value(&val, depth + 1)?));
        }
        return Ok(Value::Map(m));
    }
    if let Ok(it) = v.try_iter() {
        let l = it
            .map(|x| config_value(&x?, depth + 1))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Value::List(l));
    }
    Err(PyValueError::new_err(format!(
        "config values are dicts, lists, str, numbers, bools or None; got {}",
        v.get_type()
            .name()
            .map_or_else(|_| "?".into(), |n| n.to_string())
    )))
}
