//! How many bytes a response may grow to (`--max-response-bytes`).
//!
//! Complexity bounds how many fields a response holds, but not how large each is: a page of
//! profiles carries their attribute maps and tags, a page of history their changes. So the page
//! resolvers charge what they read to the request's [`ResponseBudget`] (a batch's requests
//! share one) before it becomes part of the response; once the charges pass the limit, every
//! further page is refused unread and the HTTP layer answers RESPONSE_TOO_LARGE in place of the
//! response, which stops growing at the page that crossed the limit instead of being built
//! whole. The HTTP layer then checks the response's text against the limit, which is exact
//! where the charges here are estimates (and covers what is not paged: at most the fields and
//! aliases the other limits allow).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_graphql::{Context, ErrorExtensions};

use crate::domain::{FieldChange, Profile, Scalar};
use crate::error::{Code, Fault};

/// The bytes one request's response may take (a batch's responses together).
#[derive(Debug)]
pub struct ResponseBudget {
    limit: usize,
    used: AtomicUsize,
    exceeded: AtomicBool,
}

impl ResponseBudget {
    pub fn new(limit: usize) -> Self {
        ResponseBudget {
            limit,
            used: AtomicUsize::new(0),
            exceeded: AtomicBool::new(false),
        }
    }

    /// Takes `bytes` from the budget, or refuses once it is spent.
    pub fn charge(&self, bytes: usize) -> Result<(), Fault> {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed).saturating_add(bytes);
        if used > self.limit {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(too_large());
        }
        Ok(())
    }

    /// Whether a charge was refused: the response is then replaced by [`too_large`].
    pub fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Relaxed)
    }
}

/// The refusal of a response larger than the limit (which, as every limit, it does not state).
pub fn too_large() -> Fault {
    Fault::new(
        Code::ResponseTooLarge,
        "The response would be larger than the server sends; ask for smaller pages or fewer fields.",
    )
}

/// Refuses at once when the request's budget is spent: a page resolver asks before it reads,
/// so that a response already too large reads nothing more.
pub(super) fn check(ctx: &Context<'_>) -> async_graphql::Result<()> {
    match ctx.data_opt::<std::sync::Arc<ResponseBudget>>() {
        Some(budget) if budget.exceeded() => Err(too_large().extend()),
        _ => Ok(()),
    }
}

/// Charges `bytes` to the request's budget, when it has one (an HTTP request that asks for a
/// page does).
pub(super) fn charge(ctx: &Context<'_>, bytes: impl FnOnce() -> usize) -> async_graphql::Result<()> {
    match ctx.data_opt::<std::sync::Arc<ResponseBudget>>() {
        Some(budget) => budget.charge(bytes()).map_err(|fault| fault.extend()),
        None => Ok(()),
    }
}

/// About how many bytes `profile` takes in a response that shows all of it.
pub(super) fn profile_bytes(profile: &Profile) -> usize {
    // Ids, serial number, status, version and times, with their names.
    const FIXED: usize = 200;
    let fields: usize = profile
        .fields
        .values()
        .map(|value| match value {
            Scalar::Text(text) => text.len() + 24,
            _ => 40,
        })
        .sum();
    let tags: usize = profile
        .tags
        .iter()
        .map(|(key, value)| key.len() + value.as_ref().map_or(4, String::len) + 24)
        .sum();
    let groups: usize = profile.groups.iter().map(|group| group.len() + 3).sum();
    let custom: usize = profile
        .custom
        .iter()
        .map(|(name, value)| name.len() + value.len() + 48)
        .sum();
    FIXED + fields + json_bytes(&profile.attributes) + tags + groups + custom
}

/// About how many bytes a history record with `changes` takes in a response.
pub(super) fn changes_bytes(changes: &[FieldChange]) -> usize {
    const FIXED: usize = 200;
    FIXED
        + changes
            .iter()
            .map(|change| change.field.len() + json_bytes(&change.before) + json_bytes(&change.after) + 40)
            .sum::<usize>()
}

/// The length of `value` written as compact JSON.
fn json_bytes(value: &(impl serde::Serialize + ?Sized)) -> usize {
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        // Nothing here fails to serialise; if it did, it would not be sent either.
        Err(_) => 0,
    }
}

/// A writer that keeps only the count of what it is given.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn a_budget_refuses_the_charge_that_passes_it_and_every_one_after() {
        let budget = ResponseBudget::new(100);
        assert!(budget.charge(60).is_ok());
        assert!(!budget.exceeded());
        assert_eq!(budget.charge(41).unwrap_err().code, Code::ResponseTooLarge);
        assert!(budget.exceeded());
        assert!(budget.charge(0).is_err());
    }

    #[test]
    fn a_profiles_estimate_grows_with_its_attributes_and_tags() {
        let mut profile = Profile::new(Uuid::nil(), 1, Utc::now());
        let empty = profile_bytes(&profile);
        profile.attributes.insert("note".to_owned(), json!("x".repeat(10_000)));
        profile.tags.insert("vip".to_owned(), Some("y".repeat(200)));
        assert!(profile_bytes(&profile) >= empty + 10_200);
    }
}
