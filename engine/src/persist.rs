//! Persistence: every component that has state implements [`Persist`].
//!
//! A component saves a plain `State` (serde data next to the component) and is rebuilt
//! from it with the live resources it needs (`ConstructorArgs`: a console, a clock), or
//! fails with its own `Error`. There are no default methods: a component that has nothing
//! to save says so in its own `save`.
//!
//! Host-time deadlines are saved relative to the moment of the save, so a restored timer
//! fires the same time after restore as it would have after the save.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Save and restore of one component.
pub trait Persist: Sized {
    /// The saved state.
    type State: Serialize + DeserializeOwned + Clone;
    /// What restore needs besides the state.
    type ConstructorArgs;
    /// Why restore can fail.
    type Error: std::error::Error;

    /// The component's state; `now` is the host clock at the save (monotonic ns).
    fn save(&self, now: u64) -> Self::State;

    /// Rebuilds the component; `now` is the host clock at the restore.
    ///
    /// # Errors
    /// The state is inconsistent.
    fn restore(args: Self::ConstructorArgs, state: &Self::State, now: u64) -> Result<Self, Self::Error>;
}

/// A device's state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum DeviceRestoreError {
    /// A field is out of range.
    #[error("{device}: invalid {field}: {value}")]
    Invalid {
        /// The device whose state it is.
        device: &'static str,
        /// The field out of range.
        field: &'static str,
        /// The value it holds.
        value: u64,
    },
}

/// Makes a time relative to `now` (wrapping: differences survive).
pub fn to_relative(t: u64, now: u64) -> u64 {
    t.wrapping_sub(now)
}

/// Makes a relative time absolute again at `now`.
pub fn to_absolute(rel: u64, now: u64) -> u64 {
    rel.wrapping_add(now)
}
