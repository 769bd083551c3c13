//! Throw-away local Postgres and NATS servers, for the demo, the tests and the load harness.
//!
//! Each server runs from the machine's own binaries (Debian packages `postgresql` and
//! `nats-server`) in a fresh temporary directory on a free port, and is removed when dropped.
//! Both can be stopped and started again on the same port and data, which is how the tests
//! show that the worker survives its database or broker going away.
//!
//! `initdb` and `postgres` refuse to run as root; when we are root (CI is), the Postgres
//! processes run as the `postgres` user that the Debian package creates.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A binary is missing.
    #[error(
        "{what} not found; install the Debian package `{package}` (sudo apt-get install -y {package})"
    )]
    Missing {
        /// What was looked for.
        what: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A command failed.
    #[error("{what} failed: {detail}")]
    Failed {
        /// What was run.
        what: String,
        /// What it said.
        detail: String,
    },
    /// The server did not come up in time.
    #[error("{0} did not become ready within 30 s")]
    Timeout(&'static str),
    /// File system or process error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> Result<u16, SandboxError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, what: &'static str, child: &mut Child) -> Result<(), SandboxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            return Err(SandboxError::Failed {
                what: what.to_owned(),
                detail: format!("exited with {status} before accepting connections"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(SandboxError::Timeout(what))
}

/// The `postgres` user's uid and gid when we run as root.
fn postgres_user() -> Result<Option<(u32, u32)>, SandboxError> {
    // `id -u` answers "are we root?" without a libc binding.
    let uid = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres") && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))?
        })
        .map(Some)
        .ok_or(SandboxError::Missing {
            what: "the `postgres` system user (needed to run Postgres as root)",
            package: "postgresql",
        })
}

/// Directory holding `initdb` and `postgres`.
fn postgres_bindir() -> Result<PathBuf, SandboxError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    // Debian: /usr/lib/postgresql/<major>/bin; take the newest.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_string_lossy().parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    find_in_path("initdb")
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .ok_or(SandboxError::Missing {
            what: "PostgreSQL server binaries (initdb, postgres)",
            package: "postgresql",
        })
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A server process that is stopped (SIGINT, waited for) or killed (SIGKILL, as a crash would)
/// on demand, and killed when dropped.
#[derive(Default)]
struct Process(Option<Child>);

impl Process {
    fn is_running(&self) -> bool {
        self.0.is_some()
    }

    fn stop(&mut self) -> Result<(), SandboxError> {
        if let Some(mut child) = self.0.take() {
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()?;
            child.wait()?;
        }
        Ok(())
    }

    fn kill(&mut self) -> Result<(), SandboxError> {
        if let Some(mut child) = self.0.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A throw-away Postgres server.
pub struct LocalPostgres {
    // Declared first so it is dropped (killed) before its directory is removed.
    process: Process,
    dir: TempDir,
    bindir: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    durable: bool,
}

impl LocalPostgres {
    /// Runs `initdb` in a new temporary directory and starts the server on a free port.
    /// Durability is switched off (`fsync=off`): this is for tests and demos.
    pub fn start() -> Result<Self, SandboxError> {
        Self::start_with(false)
    }

    /// Like [`start`](Self::start) but with Postgres' default durability (`fsync`,
    /// synchronous commit): every commit waits for the disk, as in production. For load
    /// measurements, where the commit rate is what group commit is about.
    pub fn start_durable() -> Result<Self, SandboxError> {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Result<Self, SandboxError> {
        let bindir = postgres_bindir()?;
        let owner = postgres_user()?;
        let dir = tempfile::Builder::new()
            .prefix("deploy-worker-pg-")
            .tempdir()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let data = dir.path().join("data");
        let out = Self::command(&bindir.join("initdb"), owner)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(SandboxError::Failed {
                what: "initdb".into(),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let mut server = Self {
            dir,
            bindir,
            port: free_port()?,
            owner,
            durable,
            process: Process::default(),
        };
        server.start_again()?;
        Ok(server)
    }

    fn command(program: &Path, owner: Option<(u32, u32)>) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Starts the server again on the same port and data (after [`stop`](Self::stop) or
    /// [`kill`](Self::kill)).
    pub fn start_again(&mut self) -> Result<(), SandboxError> {
        if self.process.is_running() {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.path().join("postgres.log"))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(self.dir.path().join("postgres.log"), Some(uid), Some(gid))?;
        }
        let fast: &[&str] = if self.durable {
            &[]
        } else {
            &[
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]
        };
        let mut child = Self::command(&self.bindir.join("postgres"), self.owner)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-k",
            ])
            .arg(self.dir.path())
            .args(fast)
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        wait_for_port(self.port, "postgres", &mut child)?;
        self.process = Process(Some(child));
        self.wait_until_accepting()
    }

    /// Waits until the server accepts queries (it listens before recovery is over).
    fn wait_until_accepting(&self) -> Result<(), SandboxError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let isready = self.bindir.join("pg_isready");
        if !isready.exists() {
            return Ok(());
        }
        while Instant::now() < deadline {
            let status = Command::new(&isready)
                .args([
                    "-q",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                ])
                .status()?;
            if status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(SandboxError::Timeout("postgres"))
    }

    /// Restarts the server with TLS on (the PEM certificate chain and key given) and every
    /// TCP connection required to use it (`hostssl` only in `pg_hba.conf`).
    pub fn enable_tls(&mut self, cert_pem: &str, key_pem: &str) -> Result<(), SandboxError> {
        self.stop()?;
        let data = self.dir.path().join("data");
        for (name, text) in [
            ("server.crt", cert_pem),
            ("server.key", key_pem),
            (
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            ),
        ] {
            let path = data.join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.owner {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut conf, b"\nssl = on\n")?;
        self.start_again()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server cleanly (SIGINT: fast shutdown) and waits for it.
    pub fn stop(&mut self) -> Result<(), SandboxError> {
        self.process.stop()
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> Result<(), SandboxError> {
        self.process.kill()
    }
}

/// A throw-away JetStream cluster: `n` `nats-server -js` on loopback, routed to each other.
pub struct LocalNatsCluster {
    /// The nodes, each with its own client port and store.
    pub nodes: Vec<LocalNats>,
}

impl LocalNatsCluster {
    /// Starts `n` nodes (three for a quorum that survives losing one).
    pub fn start(n: usize) -> Result<Self, SandboxError> {
        let routes: Vec<u16> = (0..n).map(|_| free_port()).collect::<Result<_, _>>()?;
        let nodes = (0..n)
            .map(|i| {
                let others: Vec<String> = routes
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, port)| format!("nats-route://127.0.0.1:{port}"))
                    .collect();
                LocalNats::start_with_config(&format!(
                    "server_name: node{i}\ncluster {{\n  name: deploy-worker-sandbox\n  \
                     listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    routes[i],
                    others.join(", ")
                ))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { nodes })
    }

    /// Every node's URL, separated by commas (what `NATS_URL` takes for a cluster).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(LocalNats::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A throw-away `nats-server -js`.
pub struct LocalNats {
    // Declared first so it is dropped (killed) before its directory is removed.
    process: Process,
    dir: TempDir,
    binary: PathBuf,
    port: u16,
    config: Option<PathBuf>,
}

impl LocalNats {
    /// Starts `nats-server -js` with a temporary store on a free port.
    pub fn start() -> Result<Self, SandboxError> {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start), with a `nats-server` configuration file holding `config`
    /// (TLS, authorization, …); the port, address and store still come from the command line.
    pub fn start_with_config(config: &str) -> Result<Self, SandboxError> {
        Self::start_with(Some(config))
    }

    fn start_with(config: Option<&str>) -> Result<Self, SandboxError> {
        let binary = find_in_path("nats-server").ok_or(SandboxError::Missing {
            what: "nats-server",
            package: "nats-server",
        })?;
        let dir = tempfile::Builder::new()
            .prefix("deploy-worker-nats-")
            .tempdir()?;
        let config = match config {
            Some(text) => {
                let path = dir.path().join("nats.conf");
                std::fs::write(&path, text)?;
                Some(path)
            }
            None => None,
        };
        let mut server = Self {
            dir,
            binary,
            port: free_port()?,
            process: Process::default(),
            config,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server again on the same port and store.
    pub fn start_again(&mut self) -> Result<(), SandboxError> {
        if self.process.is_running() {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.path().join("nats.log"))?;
        let mut command = Command::new(&self.binary);
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let mut child = command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path().join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        wait_for_port(self.port, "nats-server", &mut child)?;
        self.process = Process(Some(child));
        Ok(())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server cleanly (SIGINT) and waits for it.
    pub fn stop(&mut self) -> Result<(), SandboxError> {
        self.process.stop()
    }

    /// Kills the server (SIGKILL).
    pub fn kill(&mut self) -> Result<(), SandboxError> {
        self.process.kill()
    }
}
