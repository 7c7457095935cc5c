//! `keys`: a fresh P-256 key pair for ES256 tokens: the private half for
//! `--token-key`, the public half as a JWKS file for the hub's
//! `AETHER_TOKEN_JWKS_FILE`.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;

#[derive(clap::Args)]
pub struct Args {
    /// Directory to write es256.pem (private key, PKCS#8 PEM, mode 0600)
    /// and jwks.json into; created if missing, both files replaced.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The key's `kid` in the JWKS file (`--token-kid` of the scenarios).
    #[arg(long, value_name = "KID", default_value = "load")]
    kid: String,
}

pub fn run(args: Args) -> Result<(), String> {
    if args.kid.is_empty() {
        return Err("--kid must not be empty".into());
    }
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| "cannot make a P-256 key")?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|_| "cannot read back the P-256 key")?;
    // The public key as an uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    let (x, y) = match point {
        [4, xy @ ..] if xy.len() == 64 => xy.split_at(32),
        _ => return Err("unexpected P-256 public key encoding".into()),
    };
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": args.kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
    }]});

    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let key_path = args.dir.join("es256.pem");
    let jwks_path = args.dir.join("jwks.json");
    write_private(&key_path, pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())?;
    let text = serde_json::to_string_pretty(&jwks).map_err(|e| e.to_string())? + "\n";
    std::fs::write(&jwks_path, text).map_err(|e| format!("{}: {e}", jwks_path.display()))?;

    println!(
        "keys: wrote {} (private) and {} (kid {})",
        key_path.display(),
        jwks_path.display(),
        args.kid
    );
    let summary = serde_json::json!({
        "scenario": "keys",
        "key": key_path,
        "jwks": jwks_path,
        "kid": args.kid,
    });
    println!("{summary}");
    Ok(())
}

/// PEM text of one DER object, 64 base64 characters a line.
fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes a private key readable by its owner only, replacing any file
/// there (whose mode would otherwise be kept).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(failed)?;
    file.write_all(bytes).map_err(failed)
}
