//! A cooperative stop flag for long calls (a day's replay, a bulk load): the caller keeps a clone
//! and sets it; the work checks it between units and stops with [`Error::Interrupted`]. The
//! binding sets it when Python receives Ctrl-C while the call runs with the GIL released.

use crate::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Shared between the caller and the work; cloning shares the flag.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A flag that is not set.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the work to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// `Err(Interrupted)` naming `what` once the flag is set.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted(format!("{what} was interrupted")))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let a = Cancel::new();
        let b = a.clone();
        assert!(a.check("x").is_ok());
        b.cancel();
        assert!(a.is_cancelled());
        assert_eq!(
            a.check("the replay"),
            Err(Error::Interrupted("the replay was interrupted".into()))
        );
    }
}
