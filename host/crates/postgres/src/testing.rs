//! A throw-away PostgreSQL server for tests: `initdb` into a temporary
//! folder, `pg_ctl` on a free loopback port, stopped when dropped — the
//! same pattern as the moto harness. As root (CI), the server runs as the
//! `postgres` user, since `initdb` and `postgres` refuse root.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TempPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// Where the server's programs are: `FLOCKD_PG_BIN`, else the newest
/// Debian `postgresql` package (not on PATH there), else PATH.
pub fn server_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FLOCKD_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    if let Some(bin) = found.pop() {
        return Ok(bin);
    }
    let on_path = Command::new("sh").args(["-c", "command -v initdb"]).output()?;
    if on_path.status.success() {
        let initdb = PathBuf::from(String::from_utf8_lossy(&on_path.stdout).trim());
        return Ok(initdb.parent().unwrap_or(Path::new("/")).to_path_buf());
    }
    anyhow::bail!("no PostgreSQL server found (initdb): run scripts/setup, or set FLOCKD_PG_BIN to its bin folder")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl TempPostgres {
    pub fn start() -> anyhow::Result<TempPostgres> {
        let bin = server_bin()?;
        let dir = tempfile::Builder::new().prefix("flockd-pg-").tempdir()?;
        if is_root() {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status()?;
            anyhow::ensure!(status.success(), "chown of the test server's folder to postgres failed");
        }
        let data = dir.path().join("data");
        let out = as_server_user(Command::new(bin.join("initdb")))
            .args(["-A", "trust", "-U", "flockd", "-E", "UTF8", "--no-sync", "-D"])
            .arg(&data)
            .output()?;
        anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let pg = TempPostgres { dir, bin, port };
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let out = as_server_user(Command::new(self.bin.join("pg_ctl")))
            .arg("start")
            .arg("-w")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!("-p {} -h 127.0.0.1 -k '' -F -c max_connections=60", self.port))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
        );
        Ok(())
    }

    /// Stops the server at once (no clean shutdown: the database vanishing
    /// under a running flockd).
    pub fn stop(&self) -> anyhow::Result<()> {
        let out = as_server_user(Command::new(self.bin.join("pg_ctl")))
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.dir.path().join("data"))
            .output()?;
        anyhow::ensure!(out.status.success(), "pg_ctl stop failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    }

    /// Starts it again on the same port and data.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for the `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://flockd@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn as_server_user(program: Command) -> Command {
    if !is_root() {
        return program;
    }
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(program.get_program()).args(program.get_args());
    c
}
