//! Finds the secret that links prove (SPEC section 3: secure by default, as Erlang's cookie
//! file is): from the environment (`peer secret-env`), or from a file that is created with
//! random bytes on first start (`peer secret-file`, or by default the file beside the config:
//! `herd.conf` -> `herd.secret`). Runs once in `main`, before the port opens.
//!
//! Servers of one herd started at the same moment must end with one secret: the file is
//! written under a temporary name and then hard-linked into place, which fails for everyone
//! but the first; the others read the winner's file.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::PeerSecret;
use crate::peer_wire::PeerAuth;
use crate::secret::Secret;

/// Random bytes in a new secret (hex-encoded in the file).
const SECRET_BYTES: usize = 32;

/// A server's secret, with the seed of its handshakes' nonces, and a warning to log once
/// logging is up.
pub struct Loaded {
    pub auth: Option<PeerAuth>,
    pub warning: Option<String>,
}

/// The secret with a fresh seed for the nonces of this run's handshakes.
fn with_seed(secret: Secret) -> Result<Option<PeerAuth>, String> {
    let seed = random_bytes().map_err(|e| format!("/dev/urandom: {e} (peer secret)"))?;
    Ok(Some(PeerAuth::new(secret, seed)))
}

/// Where a server's secret comes from, resolved; `Err` is one line for stderr.
pub fn load(setting: &PeerSecret, config_path: &Path) -> Result<Loaded, String> {
    let from_file = |path: &Path, directive: &str| {
        let secret =
            read_or_create(path).map_err(|e| format!("{}: {e} ({directive})", path.display()))?;
        Ok(Loaded {
            auth: with_seed(secret)?,
            warning: loose_permissions(path),
        })
    };
    match setting {
        PeerSecret::None => Ok(Loaded {
            auth: None,
            warning: Some(
                "peer secret none: links are not authenticated, anyone who can connect may \
                 inject locations"
                    .to_string(),
            ),
        }),
        PeerSecret::Env(var) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Loaded {
                auth: with_seed(Secret::new(value))?,
                warning: None,
            }),
            _ => Err(format!("peer secret-env names {var}, which is not set")),
        },
        PeerSecret::File(path) => from_file(path, "peer secret-file"),
        PeerSecret::BesideConfig => from_file(
            &beside(config_path),
            "the peer secret file beside the config; name another with peer secret-file PATH",
        ),
    }
}

fn loose_permissions(path: &Path) -> Option<String> {
    let mode = fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "{}: the peer secret is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

/// `dir/herd.conf` -> `dir/herd.secret`.
pub fn beside(config_path: &Path) -> PathBuf {
    config_path.with_extension("secret")
}

fn read_or_create(path: &Path) -> io::Result<Secret> {
    match read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            create(path)?;
            read(path)
        }
        other => other,
    }
}

fn read(path: &Path) -> io::Result<Secret> {
    let mut text = String::new();
    fs::File::open(path)?.read_to_string(&mut text)?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(io::Error::other("the file is empty"));
    }
    Ok(Secret::new(secret.to_string()))
}

/// Writes a new random secret to `path` unless another process got there first.
fn create(path: &Path) -> io::Result<()> {
    let temp = temp_name(path);
    let result = write_new(&temp).and_then(|()| match fs::hard_link(&temp, path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()), // someone else won
        other => other,
    });
    let _ = fs::remove_file(&temp);
    result
}

/// Bytes from the kernel's random source (secrets, nonce seeds, history epochs).
pub fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut random = [0u8; N];
    fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
    Ok(random)
}

fn write_new(temp: &Path) -> io::Result<()> {
    let random: [u8; SECRET_BYTES] = random_bytes()?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(temp)?;
    file.write_all(hex(&random).as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// A name beside `path` that no other process uses: pid and clock.
fn temp_name(path: &Path) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".tmp.{}.{nanos}", std::process::id()));
    PathBuf::from(name)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "herd-secret-{name}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_default_file_is_named_after_the_config() {
        assert_eq!(
            beside(Path::new("/etc/herd/herd.conf")),
            PathBuf::from("/etc/herd/herd.secret")
        );
        assert_eq!(beside(Path::new("herd")), PathBuf::from("herd.secret"));
    }

    #[test]
    fn a_missing_file_is_created_private_and_then_read_back() {
        let dir = temp_dir("create");
        let path = dir.join("herd.secret");
        let first = read_or_create(&path).unwrap();
        assert_eq!(first.expose().len(), 2 * SECRET_BYTES);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = read_or_create(&path).unwrap();
        assert_eq!(again.expose(), first.expose());
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn servers_starting_at_once_end_with_one_secret() {
        let dir = temp_dir("race");
        let path = dir.join("herd.secret");
        let secrets: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| read_or_create(&path).unwrap().expose().to_string()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(secrets.iter().all(|s| s == &secrets[0]), "{secrets:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_others_can_read_is_used_with_a_warning() {
        let dir = temp_dir("loose");
        let path = dir.join("herd.secret");
        fs::write(&path, "s3cret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let loaded = load(&PeerSecret::File(path), Path::new("x")).ok().unwrap();
        assert!(loaded.auth.is_some());
        assert!(loaded.warning.unwrap().contains("chmod 600"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unreadable_or_empty_file_is_an_error_naming_the_file_and_directive() {
        let dir = temp_dir("bad");
        let path = dir.join("empty.secret");
        fs::write(&path, "\n").unwrap();
        let e = load(&PeerSecret::File(path.clone()), Path::new("herd.conf"))
            .err()
            .unwrap();
        assert!(
            e.contains("empty.secret") && e.contains("peer secret-file"),
            "{e}"
        );
        let missing_dir = dir.join("no/such/dir/herd.conf");
        let e = load(&PeerSecret::BesideConfig, &missing_dir).err().unwrap();
        assert!(
            e.contains("herd.secret") && e.contains("beside the config"),
            "{e}"
        );
        fs::remove_dir_all(dir).unwrap();
    }
}
