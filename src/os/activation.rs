//! The listening sockets: received from systemd (socket activation) or bound
//! from `[[listen]]` in standalone mode. baton never closes, re-binds or
//! shuts them down (rule 1); each worker gets them as fds 3, 4, ...

#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrLike, SockaddrStorage, UnixAddr, setsockopt, sockopt,
};

use crate::config::{ListenAddress, ListenSpec};

/// One listening socket and the name workers see in `LISTEN_FDNAMES`.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub fd: OwnedFd,
    /// Human-readable local address, for `status`.
    pub address: String,
}

impl Listener {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What systemd handed baton at exec, read in `main` before threads start.
#[derive(Debug, Default)]
pub struct Inherited {
    /// `Some` when LISTEN_PID matched and LISTEN_FDS was set.
    pub sockets: Option<Vec<Listener>>,
    /// systemd's NOTIFY_SOCKET, for baton's own READY=1.
    pub notify_socket: Option<String>,
    /// WATCHDOG_USEC, when it was meant for baton.
    pub watchdog_usec: Option<u64>,
    /// PATH, for finding the app's binary.
    pub path: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("systemd passed bad socket-activation variables")]
    Systemd(#[source] crate::os::sys::ListenFdsError),
    #[error("cannot bind {address}")]
    Bind {
        address: String,
        #[source]
        source: nix::Error,
    },
    #[error("{address} is already in use by another process")]
    InUse { address: String },
    #[error(
        "no sockets: systemd passed none (LISTEN_FDS) and the config has no [[listen]] entry; add one, or pass --listen ADDR"
    )]
    Nothing,
}

/// Reads systemd's variables and takes the sockets it passed. baton's own
/// environment is left as it is: `spawn.rs` builds each worker's environment
/// without these variables, so none of them reaches a worker.
pub fn take_inherited() -> Result<Inherited, ActivationError> {
    let names = std::env::var("LISTEN_FDNAMES").ok();
    let notify_socket = std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty());
    let me = std::process::id().to_string();
    let watchdog_usec = match std::env::var("WATCHDOG_PID") {
        Ok(pid) if pid != me => None,
        _ => std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse().ok()),
    };
    let sockets = crate::os::sys::take_listen_fds()
        .map_err(ActivationError::Systemd)?
        .map(|fds| {
            let names: Vec<String> = names
                .map(|n| n.split(':').map(str::to_owned).collect())
                .unwrap_or_default();
            fds.into_iter()
                .enumerate()
                .map(|(i, fd)| Listener {
                    name: names.get(i).cloned().unwrap_or_else(|| "unknown".into()),
                    address: local_address(fd.as_fd()),
                    fd,
                })
                .collect()
        });
    let path = std::env::var("PATH").ok();
    Ok(Inherited {
        sockets,
        notify_socket,
        watchdog_usec,
        path,
    })
}

/// Binds every `[[listen]]` entry.
pub fn bind_all(specs: &[ListenSpec]) -> Result<Vec<Listener>, ActivationError> {
    if specs.is_empty() {
        return Err(ActivationError::Nothing);
    }
    specs.iter().map(bind).collect()
}

fn bind(spec: &ListenSpec) -> Result<Listener, ActivationError> {
    let address = spec.address.to_string();
    let err = |source| ActivationError::Bind {
        address: address.clone(),
        source,
    };
    let flags = SockFlag::SOCK_CLOEXEC;
    let fd = match &spec.address {
        ListenAddress::Tcp(addr) => {
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let fd = socket::socket(family, SockType::Stream, flags, None).map_err(err)?;
            setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
            let sa = SockaddrStorage::from(*addr);
            socket::bind(fd.as_raw_fd(), &sa).map_err(|e| match e {
                nix::Error::EADDRINUSE => ActivationError::InUse {
                    address: address.clone(),
                },
                e => err(e),
            })?;
            fd
        }
        ListenAddress::Unix(path) => {
            remove_stale_unix_socket(path, &address)?;
            let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags, None).map_err(err)?;
            let sa = UnixAddr::new(path.as_path()).map_err(err)?;
            socket::bind(fd.as_raw_fd(), &sa).map_err(err)?;
            fd
        }
        ListenAddress::Abstract(name) => {
            let fd = socket::socket(AddressFamily::Unix, SockType::Stream, flags, None).map_err(err)?;
            let sa = UnixAddr::new_abstract(name.as_bytes()).map_err(err)?;
            socket::bind(fd.as_raw_fd(), &sa).map_err(|e| match e {
                nix::Error::EADDRINUSE => ActivationError::InUse {
                    address: address.clone(),
                },
                e => err(e),
            })?;
            fd
        }
    };
    socket::listen(&fd, Backlog::MAXCONN).map_err(err)?;
    Ok(Listener {
        name: spec.name.clone(),
        address: local_address(fd.as_fd()),
        fd,
    })
}

/// A socket file left by a dead process is removed; one that someone still
/// listens on is an error, and so is any other kind of file.
fn remove_stale_unix_socket(path: &std::path::Path, address: &str) -> Result<(), ActivationError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(ActivationError::Bind {
            address: address.to_owned(),
            source: nix::Error::EEXIST,
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ActivationError::InUse {
            address: address.to_owned(),
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// getsockname, formatted like the config's addresses.
pub fn local_address(fd: BorrowedFd<'_>) -> String {
    let Ok(addr) = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd()) else {
        return "?".into();
    };
    if let Some(v4) = addr.as_sockaddr_in() {
        return std::net::SocketAddrV4::from(*v4).to_string();
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return std::net::SocketAddrV6::from(*v6).to_string();
    }
    if let Some(unix) = addr.as_unix_addr() {
        if let Some(path) = unix.path() {
            return path.display().to_string();
        }
        if let Some(name) = unix.as_abstract() {
            return format!("@{}", String::from_utf8_lossy(name));
        }
    }
    format!("family {:?}", addr.family())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(address: &str) -> ListenSpec {
        ListenSpec {
            name: "http".into(),
            address: address.parse().unwrap(),
        }
    }

    #[test]
    fn binds_tcp_v4_v6_unix_and_abstract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let abstract_name = format!("@baton-test-{}", std::process::id());
        let specs = vec![
            spec("127.0.0.1:0"),
            spec("[::1]:0"),
            spec(path.to_str().unwrap()),
            spec(&abstract_name),
        ];
        let listeners = match bind_all(&specs) {
            Ok(l) => l,
            // Some sandboxes have no IPv6 loopback; the rest still must work.
            Err(ActivationError::Bind { address, .. }) if address.starts_with("[::1]") => {
                let mut specs = specs;
                specs.remove(1);
                bind_all(&specs).unwrap()
            }
            Err(e) => panic!("{e}"),
        };
        assert!(listeners[0].address.starts_with("127.0.0.1:"));
        assert!(listeners.iter().any(|l| l.address == path.display().to_string()));
        assert!(listeners.iter().any(|l| l.address == abstract_name));
        std::net::TcpStream::connect(listeners[0].address.as_str()).unwrap();
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let err = bind_all(&[spec(&addr)]).unwrap_err();
        assert!(matches!(err, ActivationError::InUse { .. }), "{err}");
    }

    #[test]
    fn stale_unix_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        bind_all(&[spec(path.to_str().unwrap())]).unwrap();
    }

    #[test]
    fn nothing_to_listen_on_is_an_error() {
        assert!(matches!(bind_all(&[]), Err(ActivationError::Nothing)));
    }
}
