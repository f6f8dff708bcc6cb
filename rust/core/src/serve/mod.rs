//! The serving path of DESIGN.md §1 that is not a model: the online feature store, the request
//! scorer (user embedding + explore/exploit setpoint), the fresh pool and the mixer. The
//! pipeline that strings them together with the index, ranker and re-ranker lives here too.

pub mod features;
pub mod fresh;
pub mod idhash;
pub mod mixer;
pub mod pipeline;
pub mod redis_tier;
pub mod replay;
pub mod scorer;
pub mod snapshot;
pub mod store;
pub mod window;
