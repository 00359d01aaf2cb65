//! The server's tasks, in one `JoinSet`, so that one call stops them all.

use std::sync::Arc;

use parking_lot::Mutex;

/// Every task the server runs (sources, media tasks, pipelines, pulls, HTTP, housekeeping).
/// Cheap to clone: the parts that start tasks each hold a clone.
#[derive(Clone, Default)]
pub struct Tasks(Arc<Mutex<tokio::task::JoinSet<()>>>);

impl Tasks {
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = self.0.lock();
        // Reap the finished ones as new ones come (a stream's media task ends with it).
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    /// Aborts every task.
    pub fn abort_all(&self) {
        self.0.lock().abort_all();
    }
}
