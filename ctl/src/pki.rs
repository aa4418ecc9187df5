//! `failoverctl pki`: a small certificate authority for labs and tests. It
//! makes a CA, the coordinator's certificate, certificates that name a
//! node (`urn:failover:node:NAME`) or an operator with a role
//! (`urn:failover:operator:ROLE:NAME`), and bearer tokens. Production
//! sites bring their own PKI and issue certificates with the same names.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A CA lasts ten years; the coordinator's certificate as long as asked.
const CA_DAYS: i64 = 3650;
/// Actor names events use for others than operators.
const RESERVED_NAMES: [&str; 2] = ["coordinator", "anonymous"];

/// The coordinator's certificate: about two years, like public CAs allow.
pub(crate) const COORDINATOR_DAYS: u32 = 825;
/// Nodes' and operators' certificates: a year.
pub(crate) const CLIENT_DAYS: u32 = 365;

/// `pki init DIR`: the CA and the coordinator's certificate.
pub(crate) fn init(dir: &Path, sans: &[String]) -> anyhow::Result<()> {
    if dir.join("ca.pem").exists() {
        bail!(
            "{} already holds a CA: issue more certificates with failoverctl pki issue {} (the \
             coordinator's with other names: pki issue {} --coordinator-cert --san NAME)",
            dir.display(),
            dir.display(),
            dir.display()
        );
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "failover CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, CA_DAYS);
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
    write(&dir.join("ca-key.pem"), &ca_key.serialize_pem(), true)?;

    let issuer = Issuer::new(ca, ca_key);
    coordinator_cert(dir, &issuer, sans, i64::from(COORDINATOR_DAYS))?;
    println!(
        "CA and coordinator certificate written to {} (ca.pem, ca-key.pem, coordinator.pem, \
         coordinator-key.pem)",
        dir.display()
    );
    Ok(())
}

/// The coordinator's server certificate, written over any earlier one:
/// coordinator.pem and coordinator-key.pem. It names localhost, 127.0.0.1,
/// every name the certificate it replaces named (a rotation must not drop
/// the addresses agents use) and `sans`. Returns the names.
fn coordinator_cert(
    dir: &Path,
    issuer: &Issuer<'_, KeyPair>,
    sans: &[String],
    days: i64,
) -> anyhow::Result<Vec<String>> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Ok(pem) = fs::read(dir.join("coordinator.pem")) {
        let der = first_certificate(&pem)
            .context("the existing coordinator.pem holds no readable certificate")?;
        names.extend(proto::identity::server_names(&der));
    }
    names.extend(sans.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    let mut params = CertificateParams::new(names.clone())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "failover coordinator");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    // The key first: a coordinator that reloads between the two writes
    // sees a pair that does not match, keeps the old one, and loads the
    // new pair when the second write lands.
    write(&dir.join("coordinator-key.pem"), &key.serialize_pem(), true)?;
    write(&dir.join("coordinator.pem"), &cert.pem(), false)?;
    Ok(names)
}

/// The first certificate (DER) in PEM text.
fn first_certificate(pem: &[u8]) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    Some(pem.contents)
}

/// What `pki issue` makes a certificate for.
pub(crate) enum Subject {
    Node(String),
    Operator {
        name: String,
        role: String,
    },
    /// A new server certificate for the coordinator (rotation, more names).
    Coordinator {
        sans: Vec<String>,
    },
}

/// `pki issue DIR`: a node's or an operator's client certificate, or the
/// coordinator's server certificate; `days` defaults by kind.
pub(crate) fn issue(dir: &Path, subject: &Subject, days: Option<u32>) -> anyhow::Result<()> {
    let days = days.unwrap_or(match subject {
        Subject::Coordinator { .. } => COORDINATOR_DAYS,
        _ => CLIENT_DAYS,
    });
    let ca_pem = fs::read_to_string(dir.join("ca.pem")).with_context(|| {
        format!(
            "no CA in {} (run failoverctl pki init first)",
            dir.display()
        )
    })?;
    let ca_key_pem = fs::read_to_string(dir.join("ca-key.pem"))
        .with_context(|| format!("cannot read {}/ca-key.pem", dir.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&ca_key_pem)?)
        .context("ca.pem is not a usable CA certificate")?;
    let (uri, common_name, file) = match subject {
        Subject::Coordinator { sans } => {
            let names = coordinator_cert(dir, &issuer, sans, i64::from(days))?;
            println!(
                "coordinator.pem and coordinator-key.pem written to {} (names {}, valid {days} \
                 days); a running coordinator loads them within seconds",
                dir.display(),
                names.join(", ")
            );
            return Ok(());
        }
        Subject::Node(node) => {
            proto::names::validate_node_id(node)?;
            (
                format!("urn:failover:node:{node}"),
                format!("node {node}"),
                format!("node-{node}"),
            )
        }
        Subject::Operator { name, role } => {
            proto::names::validate_node_id(name).context("operator name")?;
            if RESERVED_NAMES.contains(&name.as_str()) {
                bail!("operator name {name} is reserved: events use it for other actors");
            }
            (
                format!("urn:failover:operator:{role}:{name}"),
                format!("operator {name} ({role})"),
                format!("operator-{name}"),
            )
        }
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(uri.clone().try_into()?)];
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf(&mut params, i64::from(days));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(&dir.join(format!("{file}.pem")), &cert.pem(), false)?;
    write(
        &dir.join(format!("{file}-key.pem")),
        &key.serialize_pem(),
        true,
    )?;
    println!(
        "{file}.pem and {file}-key.pem written to {} (names {uri}, valid {days} days)",
        dir.display()
    );
    Ok(())
}

/// `pki token`: a new random token and its hash for the token file. The
/// token goes to `secret_file` (owner-only) if given, else to stdout.
pub(crate) fn token(name: &str, role: &str, secret_file: Option<&Path>) -> anyhow::Result<()> {
    proto::names::validate_node_id(name).context("token name")?;
    if RESERVED_NAMES.contains(&name) {
        bail!("token name {name} is reserved: events use it for other actors");
    }
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| anyhow::anyhow!("no randomness for a token"))?;
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let sha256: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    match secret_file {
        Some(path) => {
            write(path, &format!("{token}\n"), true)?;
            println!(
                "# The token is in {} (give it to {name} for --token-file).",
                path.display()
            );
        }
        None => {
            println!(
                "# The token (secret: give it to {name}, who keeps it in a file for --token-file):"
            );
            println!("{token}");
        }
    }
    println!("# For the coordinator's token file ([auth] tokens):");
    println!("[[token]]\nname = \"{name}\"\nrole = \"{role}\"\nsha256 = \"{sha256}\"");
    Ok(())
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks a minute or two apart.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + Duration::days(days);
}

fn leaf(params: &mut CertificateParams, days: i64) {
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(params, days);
}

/// Writes a file whole, by renaming a finished temporary file over it, so
/// that a reader (a coordinator reloading) never sees half a file; keys
/// are readable by their owner only.
fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = std::path::PathBuf::from(temporary);
    // A new file of our own, never one someone left (its owner and mode
    // would survive the rename).
    let _ = fs::remove_file(&temporary);
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    options.mode(if secret { 0o600 } else { 0o644 });
    let mut file = options
        .open(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
