//! Feature assembly for the heavy ranker (DESIGN.md §1, "feature assembly"): one user vector,
//! item rows gathered by index from a contiguous item-feature table, and user x item cross
//! features (dot products of embedding slices), written straight into the ranker's input rows.

use crate::{invalid, Result};

/// A cross feature `dot(user[user_offset..][..len], item_row[item_offset..][..len])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DotFeature {
    pub user_offset: usize,
    pub item_offset: usize,
    pub len: usize,
}

/// The shape of one assembled row.
#[derive(Clone, Debug)]
pub struct Assembly<'a> {
    pub user: &'a [f32],
    /// Row-major `(n_items, item_dim)` table.
    pub table: &'a [f32],
    pub item_dim: usize,
    pub dots: &'a [DotFeature],
    /// Whether each row starts with the user vector (for `predict`) or not (`predict_request`).
    pub include_user: bool,
}

impl Assembly<'_> {
    /// Width of one assembled row.
    pub fn width(&self) -> usize {
        self.include_user as usize * self.user.len() + self.item_dim + self.dots.len()
    }

    fn validate(&self, rows: &[usize]) -> Result<()> {
        if self.item_dim == 0 || !self.table.len().is_multiple_of(self.item_dim) {
            return Err(invalid!(
                "item_table has {} values, not a whole number of rows of {} features",
                self.table.len(),
                self.item_dim
            ));
        }
        let n_items = self.table.len() / self.item_dim;
        if let Some((i, &r)) = rows.iter().enumerate().find(|(_, &r)| r >= n_items) {
            return Err(invalid!(
                "rows[{i}] = {r} is out of range for an item table of {n_items} rows"
            ));
        }
        for (j, d) in self.dots.iter().enumerate() {
            if d.user_offset + d.len > self.user.len() || d.item_offset + d.len > self.item_dim {
                return Err(invalid!(
                    "dot feature {j} (user_offset {}, item_offset {}, len {}) overruns the user \
                     vector ({}) or the item row ({})",
                    d.user_offset,
                    d.item_offset,
                    d.len,
                    self.user.len(),
                    self.item_dim
                ));
            }
        }
        Ok(())
    }

    /// Writes one row per index in `rows` into `out` (`rows.len() x width()`), no allocation.
    pub fn assemble_into(&self, rows: &[usize], out: &mut [f32]) -> Result<()> {
        self.validate(rows)?;
        let w = self.width();
        if out.len() != rows.len() * w {
            return Err(invalid!(
                "output has {} values, {} rows x {w} features needs {}",
                out.len(),
                rows.len(),
                rows.len() * w
            ));
        }
        let du = if self.include_user {
            self.user.len()
        } else {
            0
        };
        let di = self.item_dim;
        for (&r, dst) in rows.iter().zip(out.chunks_exact_mut(w.max(1))) {
            let item = &self.table[r * di..(r + 1) * di];
            dst[..du].copy_from_slice(&self.user[..du]);
            dst[du..du + di].copy_from_slice(item);
            for (slot, d) in dst[du + di..].iter_mut().zip(self.dots) {
                let u = &self.user[d.user_offset..d.user_offset + d.len];
                let v = &item[d.item_offset..d.item_offset + d.len];
                *slot = dot(u, v);
            }
        }
        Ok(())
    }

    pub fn assemble(&self, rows: &[usize]) -> Result<Vec<f32>> {
        let mut out = vec![0.0; rows.len() * self.width()];
        self.assemble_into(rows, &mut out)?;
        Ok(out)
    }
}

/// Dot product with 8 independent partial sums (vectorises without fast-math).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_rows_and_crosses() {
        let user = [1.0, 2.0, 3.0];
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0]; // 3 items x 2
        let dots = [DotFeature {
            user_offset: 1,
            item_offset: 0,
            len: 2,
        }];
        let a = Assembly {
            user: &user,
            table: &table,
            item_dim: 2,
            dots: &dots,
            include_user: true,
        };
        let out = a.assemble(&[2, 0]).unwrap();
        assert_eq!(
            out,
            vec![
                1.0,
                2.0,
                3.0,
                20.0,
                21.0,
                2.0 * 20.0 + 3.0 * 21.0,
                1.0,
                2.0,
                3.0,
                0.0,
                1.0,
                3.0
            ]
        );
        let b = Assembly {
            include_user: false,
            ..a.clone()
        };
        assert_eq!(b.assemble(&[1]).unwrap(), vec![10.0, 11.0, 53.0]);
        assert!(a.assemble(&[3]).is_err());
        let bad = [DotFeature {
            user_offset: 2,
            item_offset: 0,
            len: 2,
        }];
        assert!(Assembly { dots: &bad, ..a }.assemble(&[0]).is_err());
    }
}
