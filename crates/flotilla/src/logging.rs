//! Logging: `tracing-subscriber` text or JSON lines, to stderr or to a (rotated) file.

use anyhow::Context;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, LogRotation};

/// Keeps the background log writer alive; drop it last (it flushes buffered lines).
pub struct LogGuard {
    _guard: Option<WorkerGuard>,
}

/// Installs the global subscriber described by `cfg`. Fails if one is already installed.
pub fn init(cfg: &LogConfig) -> anyhow::Result<LogGuard> {
    let filter: EnvFilter = cfg
        .level
        .parse()
        .with_context(|| format!("log.level = {:?}", cfg.level))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let (writer, guard) = match &cfg.file {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            let file_name = path
                .file_name()
                .with_context(|| format!("log.file = {}: no file name", path.display()))?;
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating log directory {}", dir.display()))?;
            let rotation = match cfg.rotation {
                LogRotation::Daily => Rotation::DAILY,
                LogRotation::Hourly => Rotation::HOURLY,
                LogRotation::Never => Rotation::NEVER,
            };
            let appender = RollingFileAppender::builder()
                .rotation(rotation)
                .filename_prefix(file_name.to_string_lossy().into_owned())
                .build(dir)
                .with_context(|| format!("opening log file {}", path.display()))?;
            let (w, g) = tracing_appender::non_blocking(appender);
            (w, Some(g))
        }
        None => {
            let (w, g) = tracing_appender::non_blocking(std::io::stderr());
            (w, Some(g))
        }
    };
    let ansi = cfg.file.is_none();
    let result = match cfg.format {
        LogFormat::Text => builder.with_writer(writer).with_ansi(ansi).try_init(),
        LogFormat::Json => builder.json().with_writer(writer).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    Ok(LogGuard { _guard: guard })
}
