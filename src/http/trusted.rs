//! Trusted documents: `serve --trusted-documents FILE` loads a manifest of the documents a
//! frontend was built with, a JSON object from SHA-256 hex to document text, as GraphQL Code
//! Generator's client preset writes it (`persisted-documents.json`). A request may then name a
//! document instead of sending it: `documentId` of `"sha256:<hex>"` (the GraphQL over HTTP
//! persisted documents proposal) or Apollo's `extensions.persistedQuery.sha256Hash`, by POST
//! or GET. An id the manifest does not hold is refused with PERSISTED_QUERY_NOT_FOUND. A named
//! document then goes through every limit of the edge, as a sent one does.
//!
//! With a manifest loaded, a person (an end-user token) may run only its documents, named or
//! sent as their exact text: anything else is refused with DOCUMENT_NOT_TRUSTED. API keys may
//! still send any document (they belong to the tenant's own services and tools).

use std::collections::HashMap;
use std::path::Path;

/// Why a person's document that the manifest does not hold is refused.
pub const NOT_TRUSTED: &str = "End-user tokens may run only the documents this gateway was given (--trusted-documents); send one by its documentId.";

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The documents of a manifest, by the hex of their SHA-256.
#[derive(Debug, Default)]
pub struct TrustedDocuments {
    by_hash: HashMap<String, String>,
}

impl TrustedDocuments {
    /// Reads a manifest, checking that every document hashes to its key.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read the trusted documents {}: {err}", path.display()))?;
        Self::parse(&text).map_err(|err| format!("the trusted documents {}: {err}", path.display()))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let manifest: HashMap<String, String> = serde_json::from_str(text)
            .map_err(|err| format!("not a JSON object from SHA-256 hex to document text: {err}"))?;
        let mut by_hash = HashMap::with_capacity(manifest.len());
        for (key, document) in manifest {
            let hash = key.strip_prefix("sha256:").unwrap_or(&key).to_ascii_lowercase();
            let actual = sha256_hex(&document);
            if hash != actual {
                return Err(format!(
                    "the document under {key} does not hash to it (its SHA-256 is {actual})"
                ));
            }
            by_hash.insert(hash, document);
        }
        Ok(TrustedDocuments { by_hash })
    }

    /// How many documents the manifest holds.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The document `hash` (hex, any case) names.
    pub fn get(&self, hash: &str) -> Option<&str> {
        self.by_hash.get(&hash.to_ascii_lowercase()).map(String::as_str)
    }

    /// Whether `document` is one of the manifest's, word for word.
    /// Whether the manifest holds `document`, exactly as its text reads.
    pub fn holds(&self, document: &str) -> bool {
        self.by_hash.contains_key(&sha256_hex(document))
    }
}

/// The SHA-256 of `text`, in lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The hash a request names its document by, if it names one: `documentId` of
/// `sha256:<hex>`, or `extensions.persistedQuery.sha256Hash`. `Err` for an id of another
/// kind.
pub fn named_hash<'a>(
    document_id: Option<&'a Value>,
    extensions: Option<&'a Value>,
) -> Result<Option<&'a str>, String> {
    if let Some(id) = document_id {
        let id = id
            .as_str()
            .ok_or("documentId must be a string such as \"sha256:<hex>\".")?;
        return id
            .strip_prefix("sha256:")
            .map(Some)
            .ok_or_else(|| format!("documentId {id:?} is not of the form \"sha256:<hex>\"."));
    }
    let hash = extensions
        .and_then(|extensions| extensions.get("persistedQuery"))
        .and_then(|persisted| persisted.get("sha256Hash"));
    match hash {
        None => Ok(None),
        Some(Value::String(hash)) => Ok(Some(hash)),
        Some(_) => Err("extensions.persistedQuery.sha256Hash must be a string.".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_manifest_holds_documents_by_their_hash_and_refuses_a_wrong_one() {
        let document = "query Me { profiles(first: 1) { totalCount } }";
        let hash = sha256_hex(document);
        let manifest = TrustedDocuments::parse(&json!({ &hash: document }).to_string()).unwrap();
        assert_eq!(manifest.get(&hash.to_ascii_uppercase()), Some(document));
        assert!(manifest.holds(document));
        assert!(!manifest.holds("{ __typename }"));
        let wrong = TrustedDocuments::parse(&json!({ &hash: "{ __typename }" }).to_string()).unwrap_err();
        assert!(wrong.contains("does not hash to it"), "{wrong}");
        assert!(TrustedDocuments::parse("[1, 2]").is_err());
        assert!(TrustedDocuments::parse("not json").is_err());
    }

    #[test]
    fn a_request_names_its_document_by_document_id_or_persisted_query() {
        let id = json!("sha256:abc");
        assert_eq!(named_hash(Some(&id), None), Ok(Some("abc")));
        let apollo = json!({"persistedQuery": {"version": 1, "sha256Hash": "def"}});
        assert_eq!(named_hash(None, Some(&apollo)), Ok(Some("def")));
        assert_eq!(named_hash(None, Some(&json!({}))), Ok(None));
        assert!(named_hash(Some(&json!("md5:abc")), None).is_err());
        assert!(named_hash(Some(&json!(1)), None).is_err());
    }
}
