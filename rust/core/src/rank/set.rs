//! The live + shadow ranker set (DESIGN.md §1: "shadow models score the same candidates, never
//! serve"). Each request takes one immutable [`RankerSnapshot`] (an `Arc` clone under a read
//! lock), so a response never mixes versions while `promote`/`rollback` swap the snapshot.

use std::sync::Arc;

use parking_lot::RwLock;

use super::mlp::Mlp;
use crate::{invalid, Error, Result};

/// One consistent view: the live model, the shadows, and a generation counter that changes with
/// every switch.
pub struct RankerSnapshot {
    pub live: Arc<Mlp>,
    pub shadows: Vec<Arc<Mlp>>,
    pub generation: u64,
}

impl RankerSnapshot {
    pub fn live_version(&self) -> &str {
        self.live.version()
    }
    pub fn shadow_versions(&self) -> Vec<&str> {
        self.shadows.iter().map(|m| m.version()).collect()
    }
    fn has(&self, version: &str) -> bool {
        self.live.version() == version || self.shadows.iter().any(|m| m.version() == version)
    }
}

/// One model's predictions: `n x tasks` row-major.
pub struct VersionScores {
    pub version: String,
    pub tasks: usize,
    pub preds: Vec<f32>,
}

/// Scores of one request from one snapshot: live (for ordering) and every shadow (for logging
/// with `is_shadow = true`).
pub struct SetScores {
    pub generation: u64,
    pub live: VersionScores,
    pub shadows: Vec<VersionScores>,
}

struct State {
    snap: Arc<RankerSnapshot>,
    /// Previously live models, most recent last (what `rollback` restores).
    history: Vec<Arc<Mlp>>,
}

/// One live model, any number of shadows, atomic `promote`/`rollback`. `Send + Sync`.
pub struct RankerSet {
    state: RwLock<State>,
}

impl RankerSet {
    pub fn new(live: Arc<Mlp>) -> Self {
        Self {
            state: RwLock::new(State {
                snap: Arc::new(RankerSnapshot {
                    live,
                    shadows: vec![],
                    generation: 0,
                }),
                history: vec![],
            }),
        }
    }

    /// The current view; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<RankerSnapshot> {
        self.state.read().snap.clone()
    }

    fn publish(st: &mut State, live: Arc<Mlp>, shadows: Vec<Arc<Mlp>>) {
        let generation = st.snap.generation + 1;
        st.snap = Arc::new(RankerSnapshot {
            live,
            shadows,
            generation,
        });
    }

    /// Adds a shadow; its version must be new and its input width equal to the live model's.
    pub fn add_shadow(&self, m: Arc<Mlp>) -> Result<()> {
        let mut st = self.state.write();
        if st.snap.has(m.version()) {
            return Err(invalid!(
                "a model with version {:?} is already in the set; versions must be unique",
                m.version()
            ));
        }
        if m.input_dim() != st.snap.live.input_dim() {
            return Err(invalid!(
                "shadow {:?} takes {} inputs, the live model {:?} takes {}; shadows score the same features",
                m.version(),
                m.input_dim(),
                st.snap.live.version(),
                st.snap.live.input_dim()
            ));
        }
        let live = st.snap.live.clone();
        let mut shadows = st.snap.shadows.clone();
        shadows.push(m);
        Self::publish(&mut st, live, shadows);
        Ok(())
    }

    pub fn remove_shadow(&self, version: &str) -> Result<Arc<Mlp>> {
        let mut st = self.state.write();
        let mut shadows = st.snap.shadows.clone();
        let i = shadows
            .iter()
            .position(|m| m.version() == version)
            .ok_or_else(|| not_shadow(version, &st.snap))?;
        let m = shadows.remove(i);
        let live = st.snap.live.clone();
        Self::publish(&mut st, live, shadows);
        Ok(m)
    }

    /// Makes shadow `version` live; the previous live model is kept for [`RankerSet::rollback`]
    /// (and stops being scored). Promoting the live version is a no-op.
    pub fn promote(&self, version: &str) -> Result<()> {
        let mut st = self.state.write();
        if st.snap.live.version() == version {
            return Ok(());
        }
        let mut shadows = st.snap.shadows.clone();
        let i = shadows
            .iter()
            .position(|m| m.version() == version)
            .ok_or_else(|| not_shadow(version, &st.snap))?;
        let new_live = shadows.remove(i);
        let old = st.snap.live.clone();
        st.history.push(old);
        Self::publish(&mut st, new_live, shadows);
        Ok(())
    }

    /// Undoes the last promote: the previous live model is live again and the demoted one goes
    /// back to being a shadow. Returns the version that is live now.
    pub fn rollback(&self) -> Result<String> {
        let mut st = self.state.write();
        let prev = st
            .history
            .pop()
            .ok_or_else(|| invalid!("nothing to roll back: no model has been promoted"))?;
        let demoted = st.snap.live.clone();
        let mut shadows: Vec<Arc<Mlp>> = st
            .snap
            .shadows
            .iter()
            .filter(|m| m.version() != prev.version())
            .cloned()
            .collect();
        shadows.insert(0, demoted);
        let v = prev.version().to_string();
        Self::publish(&mut st, prev, shadows);
        Ok(v)
    }

    /// Versions that `rollback` would restore, oldest first.
    pub fn history(&self) -> Vec<String> {
        self.state
            .read()
            .history
            .iter()
            .map(|m| m.version().to_string())
            .collect()
    }

    /// Scores `n x input_dim` features with the live model and every shadow of one snapshot.
    pub fn score(&self, x: &[f32], n: usize) -> Result<SetScores> {
        let snap = self.snapshot();
        Self::score_with(&snap, |m| m.predict(x, n))
    }

    /// [`RankerSet::score`] for one request with shared user features (see
    /// [`Mlp::predict_request_into`]).
    pub fn score_request(&self, user: &[f32], items: &[f32], n: usize) -> Result<SetScores> {
        let snap = self.snapshot();
        Self::score_with(&snap, |m| m.predict_request(user, items, n))
    }

    fn score_with(
        snap: &RankerSnapshot,
        f: impl Fn(&Mlp) -> Result<Vec<f32>>,
    ) -> Result<SetScores> {
        let run = |m: &Mlp| -> Result<VersionScores> {
            Ok(VersionScores {
                version: m.version().to_string(),
                tasks: m.n_tasks(),
                preds: f(m)?,
            })
        };
        Ok(SetScores {
            generation: snap.generation,
            live: run(&snap.live)?,
            shadows: snap
                .shadows
                .iter()
                .map(|m| run(m))
                .collect::<Result<Vec<_>>>()?,
        })
    }
}

fn not_shadow(version: &str, snap: &RankerSnapshot) -> Error {
    Error::NotFound(format!(
        "no shadow with version {version:?}; shadows are {:?} (live is {:?})",
        snap.shadow_versions(),
        snap.live.version()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rank::{LayerSpec, MlpConfig};

    /// A model that outputs the constant `c` whatever the input.
    fn constant(version: &str, c: f32) -> Arc<Mlp> {
        let l = LayerSpec {
            weight: vec![0.0; 3],
            in_dim: 3,
            out_dim: 1,
            bias: vec![c],
        };
        Arc::new(Mlp::new(MlpConfig::new(vec![l], version)).unwrap())
    }

    #[test]
    fn promote_rollback_and_consistency_under_load() {
        let set = Arc::new(RankerSet::new(constant("a", 1.0)));
        set.add_shadow(constant("b", 2.0)).unwrap();
        assert!(set.add_shadow(constant("b", 3.0)).is_err());
        assert!(matches!(set.promote("zz"), Err(Error::NotFound(_))));
        assert!(set.rollback().is_err());
        let value = |v: &str| if v == "a" { 1.0 } else { 2.0 };
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let set = set.clone();
                std::thread::spawn(move || {
                    let mut gens = std::collections::BTreeSet::new();
                    for _ in 0..500 {
                        let s = set.score(&[0.5; 30], 10).unwrap();
                        assert!(s.live.preds.iter().all(|&p| p == value(&s.live.version)));
                        // live "a" has shadow "b"; after promote("b") the old live "a"
                        // waits in the rollback history and is not scored
                        let want = if s.live.version == "a" { 1 } else { 0 };
                        assert_eq!(s.shadows.len(), want);
                        for sh in &s.shadows {
                            assert_ne!(sh.version, s.live.version);
                            assert!(sh.preds.iter().all(|&p| p == value(&sh.version)));
                        }
                        gens.insert(s.generation);
                    }
                    gens.len()
                })
            })
            .collect();
        // Until every reader has ended: a reader that panics ends too, so a failed assertion
        // fails the test at join() instead of leaving this loop spinning.
        while readers.iter().any(|r| !r.is_finished()) {
            set.promote("b").unwrap();
            assert_eq!(set.snapshot().live_version(), "b");
            assert_eq!(set.rollback().unwrap(), "a");
            // a short pause keeps a 2-core machine from starving the readers of the lock
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(set.snapshot().shadow_versions(), vec!["b"]);
    }
}
