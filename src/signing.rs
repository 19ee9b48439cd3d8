//! Signed bundles: what a line accepts is decided by who holds a signing key, not by who can
//! write the models folder.
//!
//! The signature covers the manifest (`bundle.toml`) byte for byte; the manifest holds the
//! sha256 of every other file of the bundle, which [`crate::bundle::Bundle::open`] checks, so
//! one signature covers all of it. It lives beside the manifest in `bundle.sig`, one line:
//! `ed25519 <public key, hex> <signature, hex>`. The daemon's `detector.trusted_keys` (in its
//! config, root's to write) lists the public keys it accepts; with none listed, bundles are
//! not checked and the daemon says so at start.
//!
//! Key files are one line of hex: the private key file holds the 32-byte ed25519 seed (keep
//! it off the line's machines: sign where bundles are made), `<key>.pub` the public key.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::bundle::MANIFEST;

/// The signature's file name inside a bundle.
pub const SIGNATURE: &str = "bundle.sig";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("trusted key `{key}`: not 64 hex digits and not a readable key file ({message})")]
    TrustedKey { key: String, message: String },
    #[error("{path}: the bundle is not signed, and detector.trusted_keys asks for a signature")]
    Unsigned { path: PathBuf },
    #[error("{path}: malformed signature file ({message}); expected `ed25519 <public key hex> <signature hex>`")]
    Malformed { path: PathBuf, message: String },
    #[error("{path}: signed by key {key}, which is not in detector.trusted_keys")]
    Untrusted { path: PathBuf, key: String },
    #[error("{path}: the signature does not match bundle.toml (changed after signing?)")]
    BadSignature { path: PathBuf },
}

fn read(path: &Path) -> Result<String, SigningError> {
    std::fs::read_to_string(path).map_err(|source| SigningError::Io { path: path.to_owned(), source })
}

/// 32 bytes from one line of hex.
fn hex32(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|e| e.to_string())?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, not 32", b.len()))
}

/// A new key pair written to `path` (private, mode 0600) and `path.pub`; returns the public
/// key's hex.
pub fn generate(path: &Path) -> Result<String, SigningError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SigningError::Key { path: path.to_owned(), message: e.to_string() })?;
    let key = SigningKey::from_bytes(&seed);
    let public = hex::encode(key.verifying_key().as_bytes());
    write_private(path, &hex::encode(seed))?;
    let pub_path = public_path(path);
    std::fs::write(&pub_path, format!("{public}\n")).map_err(|source| SigningError::Io { path: pub_path, source })?;
    Ok(public)
}

/// `<key>.pub`.
pub fn public_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn write_private(path: &Path, hex: &str) -> Result<(), SigningError> {
    use std::io::Write;
    let err = |source| SigningError::Io { path: path.to_owned(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(err)?;
    writeln!(f, "{hex}").map_err(err)
}

/// Signs the bundle in `dir` with the private key file `key`; returns the public key's hex.
pub fn sign(dir: &Path, key: &Path) -> Result<String, SigningError> {
    let seed = hex32(&read(key)?).map_err(|message| SigningError::Key { path: key.to_owned(), message })?;
    let key = SigningKey::from_bytes(&seed);
    let manifest = dir.join(MANIFEST);
    let bytes = std::fs::read(&manifest).map_err(|source| SigningError::Io { path: manifest, source })?;
    let public = hex::encode(key.verifying_key().as_bytes());
    let line = format!("ed25519 {public} {}\n", hex::encode(key.sign(&bytes).to_bytes()));
    let path = dir.join(SIGNATURE);
    std::fs::write(&path, line).map_err(|source| SigningError::Io { path, source })?;
    Ok(public)
}

/// The trusted public keys: each entry 64 hex digits, or the path of a `.pub` file.
pub fn trusted_keys(entries: &[String]) -> Result<Vec<VerifyingKey>, SigningError> {
    entries
        .iter()
        .map(|entry| {
            let bad = |message: String| SigningError::TrustedKey { key: entry.clone(), message };
            let text = match hex32(entry) {
                Ok(_) => entry.clone(),
                Err(_) => std::fs::read_to_string(entry).map_err(|e| bad(e.to_string()))?,
            };
            let bytes = hex32(&text).map_err(bad)?;
            VerifyingKey::from_bytes(&bytes).map_err(|e| bad(e.to_string()))
        })
        .collect()
}

/// Checks the bundle in `dir` against `trusted`: signed, by one of them, over exactly its
/// manifest. Returns the manifest bytes that were verified.
pub fn verify(dir: &Path, trusted: &[VerifyingKey]) -> Result<Vec<u8>, SigningError> {
    let path = dir.join(SIGNATURE);
    if !path.exists() {
        return Err(SigningError::Unsigned { path: dir.to_owned() });
    }
    let malformed = |message: &str| SigningError::Malformed { path: path.clone(), message: message.into() };
    let text = read(&path)?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [scheme, public, signature] = fields[..] else { return Err(malformed("not three fields")) };
    if scheme != "ed25519" {
        return Err(malformed(&format!("unknown scheme `{scheme}`")));
    }
    let public_bytes = hex32(public).map_err(|e| malformed(&format!("public key: {e}")))?;
    let key = trusted
        .iter()
        .find(|k| k.as_bytes() == &public_bytes)
        .ok_or_else(|| SigningError::Untrusted { path: dir.to_owned(), key: public.to_string() })?;
    let sig_bytes: [u8; 64] = hex::decode(signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| malformed("signature is not 64 bytes of hex"))?;
    let manifest = dir.join(MANIFEST);
    let bytes = std::fs::read(&manifest).map_err(|source| SigningError::Io { path: manifest, source })?;
    key.verify(&bytes, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| SigningError::BadSignature { path: dir.to_owned() })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path, manifest: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(MANIFEST), manifest).unwrap();
    }

    #[test]
    fn a_signed_manifest_verifies_only_with_its_key_and_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let (key, other) = (tmp.path().join("line.key"), tmp.path().join("other.key"));
        let public = generate(&key).unwrap();
        generate(&other).unwrap();
        assert!(generate(&key).is_err(), "an existing key is never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let b = tmp.path().join("b");
        bundle(&b, "[bundle]\nname = \"x\"\n");
        let trusted = trusted_keys(std::slice::from_ref(&public)).unwrap();
        assert!(matches!(verify(&b, &trusted), Err(SigningError::Unsigned { .. })));

        assert_eq!(sign(&b, &key).unwrap(), public);
        assert_eq!(verify(&b, &trusted).unwrap(), b"[bundle]\nname = \"x\"\n");
        // The .pub file's path works as well as its hex.
        let by_file = trusted_keys(&[public_path(&key).display().to_string()]).unwrap();
        assert!(verify(&b, &by_file).is_ok());

        sign(&b, &other).unwrap();
        let err = verify(&b, &trusted).unwrap_err().to_string();
        assert!(err.contains("not in detector.trusted_keys"), "{err}");

        sign(&b, &key).unwrap();
        std::fs::write(b.join(MANIFEST), "[bundle]\nname = \"y\"\n").unwrap();
        assert!(matches!(verify(&b, &trusted), Err(SigningError::BadSignature { .. })));

        std::fs::write(b.join(SIGNATURE), "ed25519 zz").unwrap();
        assert!(matches!(verify(&b, &trusted), Err(SigningError::Malformed { .. })));
        let err = trusted_keys(&["nope".into()]).unwrap_err().to_string();
        assert!(err.contains("`nope`"), "{err}");
    }
}
