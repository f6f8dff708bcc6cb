//! Configuration values as a host hands them over (a Python dict, parsed TOML or JSON): one
//! tree type, so every config schema (serving config, re-rank policy, experiment layers) is
//! parsed and validated here in the core, and a binding only converts its native values into
//! a [`Value`].

use crate::{invalid, Result};

/// A config value. Maps keep their order; keys are values too (TOML table keys are strings,
/// Python dict keys may be ints, e.g. category ids).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// The value's kind, as error messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::List(_) => "list",
            Value::Map(_) => "dict",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// An integer (a bool is not one).
    pub fn int(&self, name: &str) -> Result<i128> {
        match self {
            Value::Int(i) => Ok(*i),
            Value::Bool(_) => Err(invalid!("{name} must be an int, got a bool")),
            other => Err(invalid!("{name} must be an int, got {}", other.kind())),
        }
    }

    /// A non-negative integer that fits a usize.
    pub fn count(&self, name: &str) -> Result<usize> {
        let x = self.int(name)?;
        usize::try_from(x).map_err(|_| invalid!("{name} must be >= 0, got {x}"))
    }

    /// A number (int or float; not a bool).
    pub fn float(&self, name: &str) -> Result<f64> {
        match self {
            Value::Int(i) => Ok(*i as f64),
            Value::Float(f) => Ok(*f),
            Value::Bool(_) => Err(invalid!("{name} must be a number, got a bool")),
            other => Err(invalid!("{name} must be a number, got {}", other.kind())),
        }
    }

    pub fn boolean(&self, name: &str) -> Result<bool> {
        match self {
            Value::Bool(b) => Ok(*b),
            other => Err(invalid!("{name} must be a bool, got {}", other.kind())),
        }
    }

    pub fn str(&self, name: &str) -> Result<&str> {
        match self {
            Value::Str(s) => Ok(s),
            other => Err(invalid!("{name} must be a str, got {}", other.kind())),
        }
    }

    /// The entries of a map (`what` names the expected shape in the error).
    pub fn map(&self, what: &str) -> Result<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Ok(m),
            other => Err(invalid!("{what}, got {}", other.kind())),
        }
    }

    /// A map key that must be a string.
    pub fn key(&self, what: &str) -> Result<&str> {
        match self {
            Value::Str(s) => Ok(s),
            other => Err(invalid!("{what} keys must be str, got {}", other.kind())),
        }
    }

    /// A non-negative id: an int, or a str of one (TOML table keys are strings).
    pub fn id(&self, name: &str) -> Result<u64> {
        match self {
            Value::Str(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| invalid!("{name}: {s:?} is not an id; ids are non-negative ints")),
            Value::Bool(_) => Err(invalid!("{name}: ids are ints, got a bool")),
            Value::Int(i) => u64::try_from(*i)
                .map_err(|_| invalid!("{name}: ids are non-negative ints, got {i}")),
            other => Err(invalid!(
                "{name}: ids are non-negative ints, got {}",
                other.kind()
            )),
        }
    }
}

/// The deepest nesting a binding converts (a config is a few levels deep).
pub const MAX_DEPTH: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_reads_name_the_field() {
        assert_eq!(Value::Int(3).count("w").unwrap(), 3);
        assert!(Value::Int(-1)
            .count("w")
            .unwrap_err()
            .to_string()
            .contains("w must be >= 0"));
        assert!(Value::Bool(true)
            .int("w")
            .unwrap_err()
            .to_string()
            .contains("bool"));
        assert_eq!(Value::Int(2).float("x").unwrap(), 2.0);
        assert_eq!(Value::Str(" 7".into()).id("c").unwrap(), 7);
        assert!(Value::Str("x".into()).id("c").is_err());
        assert!(Value::List(vec![]).map("a dict").is_err());
    }
}
