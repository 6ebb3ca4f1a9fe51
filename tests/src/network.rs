//! What stands between people and their hub: TLS with a CA made for the test (socat as the TLS
//! front, certificates from the openssl CLI) and a real HTTP proxy (Debian's tinyproxy).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::procs::{self, Background};

/// A TLS front on `https://localhost:PORT` that forwards to a plain loopback port, with a
/// certificate for `localhost` and `127.0.0.1` signed by a CA of its own.
pub struct TlsFront {
    pub port: u16,
    /// The CA certificate (PEM) that signed the front's certificate.
    pub ca: PathBuf,
    _socat: Background,
}

impl TlsFront {
    /// Makes a CA and a server certificate in `dir`, then serves TLS in front of `target_port`.
    pub fn start(dir: &Path, target_port: u16) -> TlsFront {
        let openssl = |args: &[&str]| {
            procs::output(Command::new("openssl").args(args).current_dir(dir), 60).ok();
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=hubssh test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let port = procs::free_port();
        let socat = procs::background(
            Command::new("socat")
                .arg(format!(
                    "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
                    dir.join("server.pem").display(),
                    dir.join("server.key").display()
                ))
                .arg(format!("TCP:127.0.0.1:{target_port}")),
        );
        assert!(procs::wait_port(port, 20), "the TLS front did not start");
        TlsFront {
            port,
            ca: dir.join("ca.pem"),
            _socat: socat,
        }
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

/// tinyproxy on a loopback port, its log kept for the test to read.
pub struct Tinyproxy {
    pub port: u16,
    log: Arc<Mutex<String>>,
    _child: Background,
}

impl Tinyproxy {
    /// Starts tinyproxy with `extra` config lines (e.g. `BasicAuth user pass`, `ConnectPort 443`).
    pub fn start(dir: &Path, extra: &[&str]) -> Tinyproxy {
        assert!(
            crate::which("tinyproxy").is_some(),
            "tinyproxy is not installed (apt-get install tinyproxy)"
        );
        let port = procs::free_port();
        let mut config = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nLogLevel Info\nMaxClients 50\nUser nobody\nGroup nogroup\n"
        );
        for line in extra {
            config.push_str(line);
            config.push('\n');
        }
        let file = dir.join(format!("tinyproxy-{port}.conf"));
        std::fs::write(&file, config).expect("tinyproxy config");
        let mut child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tinyproxy");
        let log = procs::collect_lines(child.stdout.take().expect("stdout"), |_| {});
        assert!(procs::wait_port(port, 20), "tinyproxy did not start");
        Tinyproxy {
            port,
            log,
            _child: Background(child),
        }
    }

    /// `http://127.0.0.1:PORT`, or with `user:pass@`.
    pub fn url(&self, credentials: Option<&str>) -> String {
        match credentials {
            Some(c) => format!("http://{c}@127.0.0.1:{}", self.port),
            None => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// How many CONNECT requests the proxy has logged for `authority`.
    pub fn connects_to(&self, authority: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .matches(&format!("CONNECT {authority} "))
            .count()
    }
}
