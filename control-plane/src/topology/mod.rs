//! The federation's topology as the control plane holds it: an in-memory [`TopologyState`]
//! kept equal to the store by the [`follower`], the [`validate`] rules every write must
//! pass, and the [`writes`] that apply validated changes to the store atomically.

pub mod follower;
pub mod state;
pub mod validate;
pub mod writes;

pub use follower::{StateFollower, StateHandle};
pub use state::{Liveness, Stored, TopologyState};
pub use validate::Invalid;
pub use writes::{TopologyWriter, WriteError};
