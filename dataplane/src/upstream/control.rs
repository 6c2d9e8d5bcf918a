//! The control runtime: one thread with a runtime of its own for health checks and
//! outlier-detection sweeps, so they keep their timing when the workers are saturated and
//! never take a worker's time from traffic.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::Handle;
use tokio::task::AbortHandle;

static CONTROL: OnceLock<Handle> = OnceLock::new();

fn handle() -> &'static Handle {
    CONTROL.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("sluice-control")
            .build()
            .expect("the control runtime starts");
        let handle = runtime.handle().clone();
        std::thread::Builder::new()
            .name("sluice-control".into())
            .spawn(move || runtime.block_on(std::future::pending::<()>()))
            .expect("the control thread starts");
        handle
    })
}

/// Runs `task` on the control runtime; abort it with the returned handle.
pub fn spawn<F>(task: F) -> AbortHandle
where
    F: Future<Output = ()> + Send + 'static,
{
    handle().spawn(task).abort_handle()
}
