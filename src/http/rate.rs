//! Rate limits, counted per replica with governor's token buckets (GCRA).
//!
//! - Per person (each token subject of each tenant), `--token-rate` a second (20 by default,
//!   bursts of 60: more than any page needs), and per API key, when `--api-key-rate` is set (unlimited by default: keys belong to servers
//!   that their operators size): a request past the key's rate is refused with 429 and code
//!   RATE_LIMITED, with `Retry-After`.
//! - Per client address, requests whose credentials fail (`--failed-auth-rate` a second): once an
//!   address is past it, its requests are refused with 429 before any key is looked up, until
//!   its bucket refills. So a flood of bad credentials costs one map lookup each, not a database
//!   round trip.
//!
//! Each replica counts on its own: behind a load balancer over N replicas, a client gets up to N
//! times the rate.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use crate::auth::Caller;

/// The rates, each with a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Rates {
    /// Requests a second one API key may make on this replica (0: unlimited); bursts of three
    /// seconds' worth pass.
    #[arg(long, env = "API_KEY_RATE", default_value_t = 0)]
    pub api_key_rate: u32,
    /// Requests a second one person (a token's subject) may make on this replica (0:
    /// unlimited); bursts of three seconds' worth pass.
    #[arg(long, env = "TOKEN_RATE", default_value_t = 20)]
    pub token_rate: u32,
    /// Requests a second with failing credentials one client address may make on this replica
    /// before its requests are refused unread; bursts of three seconds' worth pass.
    #[arg(long, env = "FAILED_AUTH_RATE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub failed_auth_rate: u32,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            api_key_rate: 0,
            token_rate: 20,
            failed_auth_rate: 10,
        }
    }
}

/// The buckets of one replica.
pub struct Limiter {
    keys: Option<DefaultKeyedRateLimiter<Uuid>>,
    /// By tenant and subject.
    persons: Option<DefaultKeyedRateLimiter<(Uuid, String)>>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses past their failure rate, until when.
    blocked: moka::sync::Cache<IpAddr, Instant>,
    /// Whether any address may be blocked: a request then asks `blocked`, else nothing.
    any_blocked: AtomicBool,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").finish_non_exhaustive()
    }
}

/// A quota of `rate` a second with bursts of three seconds' worth.
fn quota(rate: NonZeroU32) -> Quota {
    Quota::per_second(rate).allow_burst(rate.saturating_mul(NonZeroU32::MIN.saturating_add(2)))
}

impl Limiter {
    pub fn new(rates: &Rates) -> Self {
        let failures = NonZeroU32::new(rates.failed_auth_rate).unwrap_or(NonZeroU32::MIN);
        Limiter {
            keys: NonZeroU32::new(rates.api_key_rate).map(|rate| DefaultKeyedRateLimiter::keyed(quota(rate))),
            persons: NonZeroU32::new(rates.token_rate).map(|rate| DefaultKeyedRateLimiter::keyed(quota(rate))),
            failures: DefaultKeyedRateLimiter::keyed(quota(failures)),
            blocked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            any_blocked: AtomicBool::new(false),
        }
    }

    /// How long `address` must wait, when it is past its failure rate.
    pub fn blocked(&self, address: IpAddr) -> Option<Duration> {
        if !self.any_blocked.load(Ordering::Relaxed) {
            return None;
        }
        let until = self.blocked.get(&address)?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a failed authentication from `address`.
    pub fn failed(&self, address: IpAddr) {
        if let Err(not_until) = self.failures.check_key(&address) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            self.blocked.insert(address, Instant::now() + wait);
            self.any_blocked.store(true, Ordering::Relaxed);
        }
    }

    /// Takes one request from the bucket of `caller` (its key's or its person's); how long to
    /// wait when it is empty.
    pub fn take(&self, caller: &Caller) -> Result<(), Duration> {
        let checked = match caller {
            Caller::Key(principal) => self.keys.as_ref().map(|keys| keys.check_key(&principal.key_id)),
            Caller::Person(person) => self
                .persons
                .as_ref()
                .map(|persons| persons.check_key(&(person.tenant.0, person.subject.clone()))),
        };
        match checked {
            None | Some(Ok(())) => Ok(()),
            Some(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
        }
    }

    /// Forgets buckets that are full again, so that memory follows the clients of late.
    pub fn prune(&self) {
        if let Some(keys) = &self.keys {
            keys.retain_recent();
            keys.shrink_to_fit();
        }
        if let Some(persons) = &self.persons {
            persons.retain_recent();
            persons.shrink_to_fit();
        }
        self.failures.retain_recent();
        self.failures.shrink_to_fit();
        // Cleared before the count is read: an address blocked meanwhile sets it again.
        self.any_blocked.store(false, Ordering::Relaxed);
        self.blocked.run_pending_tasks();
        if self.blocked.entry_count() > 0 {
            self.any_blocked.store(true, Ordering::Relaxed);
        }
    }
}

/// `Retry-After` for `wait`: whole seconds, at least one.
pub fn retry_after(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::{Person, Principal, Scope};
    use crate::store::TenantId;

    #[test]
    fn an_address_past_its_failure_rate_is_blocked_until_its_bucket_refills() {
        let limiter = Limiter::new(&Rates {
            failed_auth_rate: 1,
            ..Rates::default()
        });
        let address: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            limiter.failed(address);
            assert_eq!(limiter.blocked(address), None);
        }
        limiter.failed(address);
        let wait = limiter.blocked(address).expect("blocked");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(limiter.blocked([10, 0, 0, 2].into()), None);
    }

    fn key() -> Caller {
        Caller::Key(Principal {
            key_id: Uuid::new_v4(),
            tenant: TenantId(Uuid::nil()),
            scope: Scope::Write,
        })
    }

    fn person(tenant: Uuid, subject: &str) -> Caller {
        Caller::Person(Arc::new(Person {
            tenant: TenantId(tenant),
            issuer: "https://id.example".to_owned(),
            subject: subject.to_owned(),
            expires_at: 0,
        }))
    }

    #[test]
    fn a_key_gets_its_burst_then_waits_and_keys_are_unlimited_by_default() {
        let limiter = Limiter::new(&Rates {
            api_key_rate: 2,
            ..Rates::default()
        });
        let (one, another) = (key(), key());
        for _ in 0..6 {
            assert!(limiter.take(&one).is_ok());
        }
        assert!(limiter.take(&one).is_err());
        assert!(limiter.take(&another).is_ok());
        let unlimited = Limiter::new(&Rates::default());
        assert!((0..10_000).all(|_| unlimited.take(&one).is_ok()));
    }

    #[test]
    fn a_person_gets_sixty_at_once_by_default_and_each_person_of_each_tenant_has_a_bucket() {
        let limiter = Limiter::new(&Rates::default());
        let (tenant, other_tenant) = (Uuid::new_v4(), Uuid::new_v4());
        let ana = person(tenant, "ana");
        for _ in 0..60 {
            assert!(limiter.take(&ana).is_ok());
        }
        let wait = limiter.take(&ana).expect_err("past the burst");
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        assert!(limiter.take(&person(tenant, "bo")).is_ok());
        assert!(limiter.take(&person(other_tenant, "ana")).is_ok());
        let unlimited = Limiter::new(&Rates {
            token_rate: 0,
            ..Rates::default()
        });
        assert!((0..1_000).all(|_| unlimited.take(&ana).is_ok()));
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        assert_eq!(retry_after(Duration::from_millis(10)), 1);
        assert_eq!(retry_after(Duration::from_secs(1)), 1);
        assert_eq!(retry_after(Duration::from_millis(1500)), 2);
        assert_eq!(retry_after(Duration::ZERO), 1);
    }
}
