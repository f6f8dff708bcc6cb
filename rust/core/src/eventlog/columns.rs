//! The value types a log column may hold, each defined once: its Arrow type, its write-ahead
//! (binary) encoding, how a column of it becomes an Arrow array and how it is read back. The
//! table declarations (`tables.rs`) are built from these, so a column's four forms cannot drift.

use super::record::{FeatureEventKind, Source};
use crate::{Error, Result};
use arrow_array::builder::{Float32Builder, ListBuilder, StringBuilder, UInt64Builder};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, ListArray,
    StringArray, UInt64Array,
};
use arrow_schema::{DataType, Field};
use std::sync::Arc;

/// A value type of a log column.
pub(crate) trait Column: Sized {
    /// The Arrow type of the column (columns are never null).
    fn data_type() -> DataType;
    /// Appends the write-ahead form.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads the write-ahead form; `Corrupt` when it does not parse.
    fn decode(d: &mut Dec<'_>) -> Result<Self>;
    /// The Arrow array of a column of these values.
    fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef
    where
        Self: 'a;
    /// The values of an Arrow column; `None` when the array is not of [`Column::data_type`].
    fn read(a: &dyn Array) -> Option<Result<Vec<Self>>>;
}

/// The reading side of the write-ahead form.
pub(crate) struct Dec<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Dec<'a> {
    pub fn new(b: &'a [u8]) -> Dec<'a> {
        Dec { b, at: 0 }
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> usize {
        self.b.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| Error::Corrupt("write-ahead record is truncated".into()))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn len(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.arr()?) as usize)
    }
}

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

macro_rules! primitive_column {
    ($t:ty, $arr:ty, $dt:expr) => {
        impl Column for $t {
            fn data_type() -> DataType {
                $dt
            }
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(d: &mut Dec<'_>) -> Result<Self> {
                Ok(<$t>::from_le_bytes(d.arr()?))
            }
            fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(<$arr>::from_iter_values(values.copied()))
            }
            fn read(a: &dyn Array) -> Option<Result<Vec<Self>>> {
                let a = a.as_any().downcast_ref::<$arr>()?;
                Some(no_nulls(a).map(|()| a.values().to_vec()))
            }
        }
    };
}

primitive_column!(u64, UInt64Array, DataType::UInt64);
primitive_column!(i64, Int64Array, DataType::Int64);
primitive_column!(i32, Int32Array, DataType::Int32);
primitive_column!(f32, Float32Array, DataType::Float32);
primitive_column!(f64, Float64Array, DataType::Float64);

fn no_nulls(a: &dyn Array) -> Result<()> {
    if a.null_count() == 0 {
        Ok(())
    } else {
        Err(Error::Corrupt(format!(
            "a log column holds {} nulls; log columns are never null",
            a.null_count()
        )))
    }
}

impl Column for bool {
    fn data_type() -> DataType {
        DataType::Boolean
    }
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn decode(d: &mut Dec<'_>) -> Result<Self> {
        Ok(d.u8()? != 0)
    }
    fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(BooleanArray::from_iter(values.map(|v| Some(*v))))
    }
    fn read(a: &dyn Array) -> Option<Result<Vec<Self>>> {
        let a = a.as_any().downcast_ref::<BooleanArray>()?;
        Some(no_nulls(a).map(|()| a.values().iter().collect()))
    }
}

impl Column for String {
    fn data_type() -> DataType {
        DataType::Utf8
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_len(out, self.len());
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(d: &mut Dec<'_>) -> Result<Self> {
        let n = d.len()?;
        String::from_utf8(d.take(n)?.to_vec())
            .map_err(|_| Error::Corrupt("write-ahead record holds invalid UTF-8".into()))
    }
    fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(values))
    }
    fn read(a: &dyn Array) -> Option<Result<Vec<Self>>> {
        let a = a.as_any().downcast_ref::<StringArray>()?;
        Some(no_nulls(a).map(|()| a.iter().map(|s| s.unwrap_or("").to_owned()).collect()))
    }
}

/// A list column's element: the list's Arrow type is `List(<element>)`, items nullable (the
/// Arrow default that pyarrow and DuckDB write), the values never null.
fn list_type(inner: DataType) -> DataType {
    DataType::List(Arc::new(Field::new("item", inner, true)))
}

fn read_list<T: Column + Copy>(a: &dyn Array) -> Option<Result<Vec<Vec<T>>>> {
    let list = a.as_any().downcast_ref::<ListArray>()?;
    let values = T::read(list.values().as_ref())?;
    Some(values.and_then(|v| {
        no_nulls(list)?;
        let o = list.value_offsets();
        Ok((0..list.len())
            .map(|i| v[o[i] as usize..o[i + 1] as usize].to_vec())
            .collect())
    }))
}

macro_rules! list_column {
    ($t:ty, $builder:ty) => {
        impl Column for Vec<$t> {
            fn data_type() -> DataType {
                list_type(<$t>::data_type())
            }
            fn encode(&self, out: &mut Vec<u8>) {
                put_len(out, self.len());
                for x in self {
                    x.encode(out);
                }
            }
            fn decode(d: &mut Dec<'_>) -> Result<Self> {
                let n = d.len()?;
                let width = std::mem::size_of::<$t>();
                let raw = d.take(n.saturating_mul(width))?;
                let mut inner = Dec::new(raw);
                (0..n).map(|_| <$t>::decode(&mut inner)).collect()
            }
            fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                let mut b = ListBuilder::new(<$builder>::new());
                for v in values {
                    b.values().append_slice(v);
                    b.append(true);
                }
                Arc::new(b.finish())
            }
            fn read(a: &dyn Array) -> Option<Result<Vec<Self>>> {
                read_list::<$t>(a)
            }
        }
    };
}

list_column!(u64, UInt64Builder);
list_column!(f32, Float32Builder);

impl Column for Vec<String> {
    fn data_type() -> DataType {
        list_type(DataType::Utf8)
    }
    fn encode(&self, out: &mut Vec<u8>) {
        put_len(out, self.len());
        for x in self {
            x.encode(out);
        }
    }
    fn decode(d: &mut Dec<'_>) -> Result<Self> {
        let n = d.len()?;
        // every string takes at least its 4-byte length: a count the bytes cannot hold is corrupt
        if n > d.remaining() / 4 {
            return Err(Error::Corrupt("write-ahead record is truncated".into()));
        }
        (0..n).map(|_| String::decode(d)).collect()
    }
    fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for v in values {
            for s in v {
                b.values().append_value(s);
            }
            b.append(true);
        }
        Arc::new(b.finish())
    }
    fn read(a: &dyn Array) -> Option<Result<Vec<Self>>> {
        let list = a.as_any().downcast_ref::<ListArray>()?;
        let values = String::read(list.values().as_ref())?;
        Some(values.and_then(|v| {
            no_nulls(list)?;
            let o = list.value_offsets();
            Ok((0..list.len())
                .map(|i| v[o[i] as usize..o[i + 1] as usize].to_vec())
                .collect())
        }))
    }
}

/// Enumerations stored as their name (a string column) and as one byte in the write-ahead file.
macro_rules! enum_column {
    ($t:ty) => {
        impl Column for $t {
            fn data_type() -> DataType {
                DataType::Utf8
            }
            fn encode(&self, out: &mut Vec<u8>) {
                out.push(*self as u8);
            }
            fn decode(d: &mut Dec<'_>) -> Result<Self> {
                <$t>::from_u8(d.u8()?)
            }
            fn array<'a>(values: impl Iterator<Item = &'a Self>) -> ArrayRef {
                Arc::new(StringArray::from_iter_values(values.map(|v| v.as_str())))
            }
            fn read(a: &dyn Array) -> Option<Result<Vec<Self>>> {
                let a = a.as_any().downcast_ref::<StringArray>()?;
                Some(no_nulls(a).and_then(|()| {
                    a.iter()
                        .map(|s| {
                            <$t>::parse(s.unwrap_or(""))
                                .map_err(|e| Error::Corrupt(format!("log column: {e}")))
                        })
                        .collect()
                }))
            }
        }
    };
}

enum_column!(Source);
enum_column!(FeatureEventKind);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Column + PartialEq + std::fmt::Debug>(values: Vec<T>) {
        for v in &values {
            let mut b = Vec::new();
            v.encode(&mut b);
            let mut d = Dec::new(&b);
            assert_eq!(&T::decode(&mut d).unwrap(), v);
            assert_eq!(d.remaining(), 0);
        }
        let a = T::array(values.iter());
        assert_eq!(a.data_type(), &T::data_type());
        assert_eq!(T::read(a.as_ref()).unwrap().unwrap(), values);
    }

    #[test]
    fn every_column_type_round_trips_both_forms() {
        round_trip(vec![0u64, u64::MAX]);
        round_trip(vec![i64::MIN, -1, 7]);
        round_trip(vec![-3i32, i32::MAX]);
        round_trip(vec![0.5f32, -0.0, f32::MAX]);
        round_trip(vec![1e-300f64, 100.0]);
        round_trip(vec![true, false]);
        round_trip(vec![String::new(), "é x".to_string()]);
        round_trip(vec![vec![], vec![1u64, u64::MAX]]);
        round_trip(vec![vec![0.25f32], vec![]]);
        round_trip(vec![vec![], vec!["s1".to_string(), String::new()]]);
        round_trip(vec![Source::Fresh, Source::Ranked, Source::Exploration]);
        round_trip(vec![FeatureEventKind::BatchSwap, FeatureEventKind::Upload]);
    }

    #[test]
    fn mistyped_arrays_are_refused_not_misread() {
        let a = u64::array([1u64, 2].iter());
        assert!(String::read(a.as_ref()).is_none());
        assert!(i64::read(a.as_ref()).is_none());
        let s = String::array(["x".to_string()].iter());
        assert!(matches!(
            Source::read(s.as_ref()),
            Some(Err(Error::Corrupt(_)))
        ));
    }
}
