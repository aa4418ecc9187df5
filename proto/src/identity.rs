//! What a certificate says about its holder, by one rule every part
//! shares: a URI subject alternative name `urn:failover:node:NODE` names a
//! node's agent, `urn:failover:operator:ROLE:NAME` an operator with a
//! role. A certificate with more than one such name names nobody (it
//! would be ambiguous which one speaks).

use crate::names;

pub const NODE_URI: &str = "urn:failover:node:";
pub const OPERATOR_URI: &str = "urn:failover:operator:";
/// The roles an operator URI may carry.
pub const ROLES: [&str; 3] = ["viewer", "operator", "admin"];

/// Who a certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    Node(String),
    Operator { role: String, name: String },
}

impl std::fmt::Display for Named {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Named::Node(node) => write!(f, "node {node}"),
            Named::Operator { role, name } => write!(f, "operator {name} ({role})"),
        }
    }
}

/// The URI that names `node`.
pub fn node_uri(node: &str) -> String {
    format!("{NODE_URI}{node}")
}

/// The URI that names operator `name` with `role`.
pub fn operator_uri(role: &str, name: &str) -> String {
    format!("{OPERATOR_URI}{role}:{name}")
}

/// Who a certificate (DER) names: `Ok(None)` when it carries no failover
/// URI, an error when it cannot be read or names more than one holder or
/// carries a malformed failover URI.
pub fn named_by(der: &[u8]) -> Result<Option<Named>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not a readable certificate: {e}"))?;
    let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable subject alternative names: {e}"))?
    else {
        return Ok(None);
    };
    let mut found = Vec::new();
    for name in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name
            && uri.starts_with("urn:failover:")
        {
            found.push(parse_uri(uri)?);
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err("the certificate names more than one holder (several urn:failover: URIs)".into()),
    }
}

/// The DNS names and IP addresses a certificate (DER) is valid for.
pub fn server_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                4 => <[u8; 4]>::try_from(*ip)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*ip)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn parse_uri(uri: &str) -> Result<Named, String> {
    if let Some(node) = uri.strip_prefix(NODE_URI) {
        names::validate_node_id(node).map_err(|e| format!("{uri}: {e}"))?;
        return Ok(Named::Node(node.to_owned()));
    }
    let rest = uri
        .strip_prefix(OPERATOR_URI)
        .ok_or_else(|| format!("{uri}: not {NODE_URI}NODE or {OPERATOR_URI}ROLE:NAME"))?;
    let (role, name) = rest
        .split_once(':')
        .ok_or_else(|| format!("{uri}: not {OPERATOR_URI}ROLE:NAME"))?;
    if !ROLES.contains(&role) {
        return Err(format!(
            "{uri}: the role must be viewer, operator or admin (lowercase)"
        ));
    }
    names::validate_node_id(name).map_err(|e| format!("{uri}: {e}"))?;
    Ok(Named::Operator {
        role: role.to_owned(),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(uris: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|u| rcgen::SanType::URI((*u).try_into().unwrap()))
            .collect();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn a_certificate_names_one_holder_or_nobody() {
        assert_eq!(
            named_by(&cert_with(&["urn:failover:node:n1"])),
            Ok(Some(Named::Node("n1".into())))
        );
        assert_eq!(named_by(&cert_with(&["https://example.com"])), Ok(None));
        for ambiguous in [
            &["urn:failover:node:n1", "urn:failover:node:n2"][..],
            &["urn:failover:node:n1", "urn:failover:operator:admin:x"][..],
            &["urn:failover:node:N1", "urn:failover:node:n1"][..],
        ] {
            assert!(named_by(&cert_with(ambiguous)).is_err(), "{ambiguous:?}");
        }
    }

    #[test]
    fn uris_name_nodes_and_operators_exactly() {
        assert_eq!(
            parse_uri("urn:failover:node:rec-1"),
            Ok(Named::Node("rec-1".into()))
        );
        assert_eq!(
            parse_uri("urn:failover:operator:admin:alice"),
            Ok(Named::Operator {
                role: "admin".into(),
                name: "alice".into()
            })
        );
        for bad in [
            "urn:failover:node:Not Valid",
            "urn:failover:node:REC-1",
            "urn:failover:operator:root:alice",
            "urn:failover:operator:Admin:alice",
            "urn:failover:operator:admin",
            "urn:failover:nodes:rec-1",
        ] {
            assert!(parse_uri(bad).is_err(), "{bad}");
        }
    }
}
