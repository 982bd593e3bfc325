//! One shutdown signal for every daemon: SIGTERM (systemd, `kill`) or SIGINT (Ctrl-C).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Completes on SIGTERM or SIGINT and says which. If a handler cannot be installed the
/// daemon is told at once (an operator could not stop it cleanly otherwise).
pub async fn wait_for_signal() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Completes on SIGTERM or SIGINT, after logging which. If the handlers cannot be
/// installed it logs why and never completes: the daemon still works, it just cannot
/// stop cleanly.
pub async fn terminated() {
    match wait_for_signal().await {
        Ok(name) => tracing::info!(signal = name, "shutting down"),
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM/SIGINT; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// A watch that turns true on SIGTERM or SIGINT, for daemons that hand a shutdown flag
/// to many tasks. Must be called inside a Tokio runtime.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        let _ = tx.send(true);
    });
    rx
}

/// Completes when the flag of [`shutdown_signal`] turns true (or its sender is gone).
pub async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
