//! Routing tables: what each federation's proxies route with. [`table`] builds one
//! federation's table from the topology and diffs two tables into a delta; [`publisher`]
//! debounces store changes into versioned tables that every stream follows; [`encoded`]
//! encodes each version's snapshot and deltas once for every stream to share.

pub mod encoded;
pub mod publisher;
pub mod table;

pub use encoded::{EncodedUpdate, UpdateKind};
pub use publisher::{FederationTable, Published, TablePublisher};
pub use table::TableContent;
